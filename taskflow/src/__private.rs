//! Not public API. Used by generated code.
//!
//! `#[task]` expands to paths under `::taskflow::__private`, so a user's crate
//! needs no dependency but `taskflow`. Nothing here is covered by semver.

use std::fmt::Display;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use taskflow_worker::codec::ArgsWriter;
pub use taskflow_worker::inventory;
pub use taskflow_worker::registry::{
    AttemptFuture, Body, Executor, Location, Output, Registration, TaskDefaults, TaskEntry,
};
pub use taskflow_worker::resource::{ResourceKey, Resources};
pub use taskflow_worker::{CodecError, Resource, TaskError};

use crate::call::TaskCall;

pub use tokio;

// Not public API. Used by generated code.
pub fn enter_worker_mode() {
    crate::init();
}

// Not public API. Used by generated code.
pub fn enter_worker_mode_with(resources: impl FnOnce(&mut Resources) + 'static) {
    crate::init_with(resources);
}

// Not public API. Used by generated code.
pub fn new_call<T: 'static>(entry: &'static TaskEntry, args: ArgsWriter) -> TaskCall<T> {
    TaskCall::new(entry, args)
}

// Not public API. Used by generated code.
pub fn decode_args<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, TaskError> {
    taskflow_worker::codec::decode(bytes).map_err(|error| {
        TaskError::error(format!(
            "cannot decode the task's arguments: {}",
            error_chain(&error)
        ))
    })
}

// Not public API. Used by generated code.
pub fn resource<T: Send + Sync + 'static>(resources: &Resources) -> Result<Resource<T>, TaskError> {
    resources.get::<T>().ok_or_else(|| {
        TaskError::error(format!(
            "resource `{}` is not available here",
            std::any::type_name::<T>()
        ))
    })
}

// Not public API. Used by generated code.
pub fn output<T: Send + 'static>(value: T) -> Result<Output, TaskError> {
    Ok(Box::new(value))
}

// Not public API. Used by generated code.
pub fn fallible<R: Fallible>(result: R) -> Result<Output, TaskError>
where
    R::Ok: Send + 'static,
{
    match result.into_result() {
        Ok(value) => Ok(Box::new(value)),
        Err(message) => Err(TaskError::error(message)),
    }
}

// Not public API. Used by generated code.
pub fn encode_output<T: Serialize + 'static>(output: Output) -> Result<Vec<u8>, CodecError> {
    match output.downcast::<T>() {
        Ok(value) => taskflow_worker::codec::encode(&*value),
        Err(_) => Err(CodecError::Encode(
            "the output is not of the task's type".into(),
        )),
    }
}

/// A return type whose `Err` fails the attempt.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is named `Result` but is not a `Result<T, E>` with `E: Display`",
    label = "a task returning a `Result` records its error's text, so the error must implement `Display`"
)]
pub trait Fallible {
    /// The success type.
    type Ok;
    /// The value, or the error's text.
    fn into_result(self) -> Result<Self::Ok, String>;
}

impl<T, E: Display> Fallible for Result<T, E> {
    type Ok = T;

    fn into_result(self) -> Result<T, String> {
        // `{:#}` shows the whole chain for errors that support it (anyhow).
        self.map_err(|error| format!("{error:#}"))
    }
}

// Not public API. Used by generated code.
pub fn assert_argument<T: Serialize + DeserializeOwned + Send + 'static>() {}

// Not public API. Used by generated code.
pub fn assert_output<T: Serialize + DeserializeOwned + Send + 'static>() {}

// Not public API. Used by generated code.
pub fn assert_resource<T: Send + Sync + 'static>() {}

// Not public API. Used by generated code.
pub fn assert_fallible<R: Fallible>() {}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
