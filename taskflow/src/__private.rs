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
    AttemptFuture, Body, Executor, Location, Output, Registration, Signature, TaskDefaults,
    TaskEntry,
};
pub use taskflow_worker::resource::{ResourceKey, Resources};
pub use taskflow_worker::{CodecError, Resource, TaskError};

use crate::call::TaskCall;
pub use crate::schedule::{CatchUp, ScheduleEntry};

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

fn decode_args<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, TaskError> {
    taskflow_worker::codec::decode(bytes).map_err(|error| {
        TaskError::error(format!(
            "cannot decode the task's arguments: {}",
            crate::error::chain(&error)
        ))
    })
}

// The bounds on a task's types are each required at exactly one place in the
// generated code: `args{N}::<A, B, …>()`, `returns::<T>()` and `resource::<T>()`,
// each with the user's own type tokens as generic arguments, so an error lands
// on the user's type and is reported once. What those functions return
// carries the serde work as function pointers, so the rest of the generated
// code (`call`, the entry point, the output encoder) needs no bound and adds
// no second error when one fails. `do_not_recommend` on the blanket impls
// makes a type that misses several bounds one error in the user's terms
// instead of one per missing serde trait.

/// A type a task can take as an argument: data that can be stored, retried
/// and sent to a worker process.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a task argument: it must implement `serde::Serialize` and `serde::Deserialize`",
    label = "add `#[derive(Serialize, Deserialize)]` to this type",
    note = "a task's arguments are stored and sent to other threads and processes as data; for a type from another crate, enable its `serde` feature or pass data it can be built from"
)]
pub trait TaskArgument: Serialize + DeserializeOwned + 'static {}

#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned + 'static> TaskArgument for T {}

/// A type a task can return: data that can be stored and sent back from a
/// worker process.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a task's output: it must implement `serde::Serialize` and `serde::Deserialize`",
    label = "add `#[derive(Serialize, Deserialize)]` to this type",
    note = "a task's output is stored and sent back from other threads and processes as data; for a type from another crate, enable its `serde` feature or return data it can be built from"
)]
pub trait TaskOutput: Serialize + DeserializeOwned + 'static {}

#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned + 'static> TaskOutput for T {}

/// A type a task can take as `Resource<T>`: shared by tasks on many threads.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a task resource: it must be `Send + Sync`",
    label = "shared by tasks running on many threads at once",
    note = "wrap it in a `std::sync::Mutex`, or use a thread-safe type"
)]
pub trait TaskResource: Send + Sync + 'static {}

#[diagnostic::do_not_recommend]
impl<T: Send + Sync + 'static> TaskResource for T {}

/// How a task's arguments, as a tuple, are written at enqueue, read back
/// when it runs, and shown by the admin API. Built by `args{N}`, where the
/// bounds are proven once.
// Not public API. Used by generated code.
pub struct Args<T> {
    names: &'static [&'static str],
    write: fn(&'static [&'static str], &T) -> ArgsWriter,
    read: fn(&[u8]) -> Result<T, TaskError>,
    json: fn(&'static [&'static str], &[u8]) -> Result<String, CodecError>,
}

impl<T: ArgTuple> Args<T> {
    fn new(names: &'static [&'static str]) -> Self {
        Args {
            names,
            write: T::write,
            read: decode_args::<T>,
            json: arguments_json::<T>,
        }
    }
}

/// The stored arguments `bytes` decoded as `T` and written as a JSON object
/// keyed by `names`, in order: what `TaskEntry::arguments_json` promises.
#[cfg(feature = "admin")]
fn arguments_json<T: ArgTuple>(
    names: &'static [&'static str],
    bytes: &[u8],
) -> Result<String, CodecError> {
    /// The tuple as a map from parameter name to value.
    struct Named<'a, T> {
        names: &'static [&'static str],
        values: &'a T,
    }

    impl<T: ArgTuple> Serialize for Named<'_, T> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            self.values.serialize_named(self.names, serializer)
        }
    }

    let values: T = taskflow_worker::codec::decode(bytes)?;
    serde_json::to_string(&Named {
        names,
        values: &values,
    })
    .map_err(|error| CodecError::Encode(Box::new(error)))
}

/// Without the admin API there is nothing to show arguments to, and no JSON.
/// (`T` keeps the signature the generated code names either way.)
#[cfg(not(feature = "admin"))]
#[allow(clippy::extra_unused_type_parameters)]
fn arguments_json<T>(_: &'static [&'static str], _: &[u8]) -> Result<String, CodecError> {
    Err(CodecError::Encode(
        "showing arguments as JSON needs taskflow's `admin` feature".into(),
    ))
}

impl<T> Args<T> {
    // Not public API. Used by generated code.
    pub fn write(&self, values: &T) -> ArgsWriter {
        (self.write)(self.names, values)
    }

    // Not public API. Used by generated code.
    pub fn read(&self, bytes: &[u8]) -> Result<T, TaskError> {
        (self.read)(bytes)
    }

    // Not public API. Used by generated code.
    //
    // Stored arguments as JSON text, for `TaskEntry::arguments_json`.
    pub fn json(&self, bytes: &[u8]) -> Result<String, CodecError> {
        (self.json)(self.names, bytes)
    }

    // Not public API. Used by generated code.
    //
    // The tuple's name, for the worker handshake. A method rather than
    // `type_name` in the generated code, so the user's types are named once.
    pub fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
}

impl<T> std::fmt::Debug for Args<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Args").field("names", &self.names).finish()
    }
}

/// A tuple of arguments, written one by one so an encoding failure names
/// the argument.
pub trait ArgTuple: DeserializeOwned {
    /// Writes each value under its name.
    fn write(names: &'static [&'static str], values: &Self) -> ArgsWriter;

    /// Serializes the values as a map from each one's name to it, in order.
    ///
    /// # Errors
    ///
    /// Whatever the serializer or a value's `Serialize` reports.
    fn serialize_named<S: serde::Serializer>(
        &self,
        names: &'static [&'static str],
        serializer: S,
    ) -> Result<S::Ok, S::Error>;
}

macro_rules! arg_tuples {
    ($(($($A:ident $i:tt),*))*) => {$(
        impl<$($A: TaskArgument),*> ArgTuple for ($($A,)*) {
            fn write(names: &'static [&'static str], values: &Self) -> ArgsWriter {
                let _ = (names, values);
                #[allow(unused_mut, reason = "a task may take no argument")]
                let mut writer = ArgsWriter::new();
                $( writer.push(names[$i], &values.$i); )*
                writer
            }

            fn serialize_named<S: serde::Serializer>(
                &self,
                names: &'static [&'static str],
                serializer: S,
            ) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                // One name per value: `#[task]` passes them together.
                #[allow(unused_mut, reason = "a task may take no argument")]
                let mut map = serializer.serialize_map(Some(names.len()))?;
                $( map.serialize_entry(names[$i], &self.$i)?; )*
                map.end()
            }
        }
    )*};
}

arg_tuples! {
    ()
    (A0 0)
    (A0 0, A1 1)
    (A0 0, A1 1, A2 2)
    (A0 0, A1 1, A2 2, A3 3)
    (A0 0, A1 1, A2 2, A3 3, A4 4)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7, A8 8)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7, A8 8, A9 9)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7, A8 8, A9 9, A10 10)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7, A8 8, A9 9, A10 10, A11 11)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7, A8 8, A9 9, A10 10, A11 11, A12 12)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7, A8 8, A9 9, A10 10, A11 11, A12 12, A13 13)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7, A8 8, A9 9, A10 10, A11 11, A12 12, A13 13, A14 14)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7, A8 8, A9 9, A10 10, A11 11, A12 12, A13 13, A14 14, A15 15)
}

pub use arity::*;

// Not public API. Used by generated code.
//
// One function per arity, written out rather than generated by a macro: an
// unmet bound's "required by a bound in `argsN`" note then quotes one plain
// line instead of a macro expansion. 16 is as many as serde implements its
// traits for tuples of; `#[task]` refuses more.
#[rustfmt::skip]
#[allow(clippy::type_complexity, reason = "one tuple of up to 16 argument types")]
mod arity {
    use super::{Args, TaskArgument};

    type Names = &'static [&'static str];

    pub fn args0(names: Names) -> Args<()> { Args::new(names) }
    pub fn args1<A0: TaskArgument + Send>(names: Names) -> Args<(A0,)> { Args::new(names) }
    pub fn args2<A0: TaskArgument + Send, A1: TaskArgument + Send>(names: Names) -> Args<(A0, A1)> { Args::new(names) }
    pub fn args3<A0: TaskArgument + Send, A1: TaskArgument + Send, A2: TaskArgument + Send>(names: Names) -> Args<(A0, A1, A2)> { Args::new(names) }
    pub fn args4<A0: TaskArgument + Send, A1: TaskArgument + Send, A2: TaskArgument + Send, A3: TaskArgument + Send>(names: Names) -> Args<(A0, A1, A2, A3)> { Args::new(names) }
    pub fn args5<A0: TaskArgument + Send, A1: TaskArgument + Send, A2: TaskArgument + Send, A3: TaskArgument + Send, A4: TaskArgument + Send>(names: Names) -> Args<(A0, A1, A2, A3, A4)> { Args::new(names) }
    pub fn args6<A0: TaskArgument + Send, A1: TaskArgument + Send, A2: TaskArgument + Send, A3: TaskArgument + Send, A4: TaskArgument + Send, A5: TaskArgument + Send>(names: Names) -> Args<(A0, A1, A2, A3, A4, A5)> { Args::new(names) }
    pub fn args7<A0: TaskArgument + Send, A1: TaskArgument + Send, A2: TaskArgument + Send, A3: TaskArgument + Send, A4: TaskArgument + Send, A5: TaskArgument + Send, A6: TaskArgument + Send>(names: Names) -> Args<(A0, A1, A2, A3, A4, A5, A6)> { Args::new(names) }
    pub fn args8<A0: TaskArgument + Send, A1: TaskArgument + Send, A2: TaskArgument + Send, A3: TaskArgument + Send, A4: TaskArgument + Send, A5: TaskArgument + Send, A6: TaskArgument + Send, A7: TaskArgument + Send>(names: Names) -> Args<(A0, A1, A2, A3, A4, A5, A6, A7)> { Args::new(names) }
    pub fn args9<A0: TaskArgument + Send, A1: TaskArgument + Send, A2: TaskArgument + Send, A3: TaskArgument + Send, A4: TaskArgument + Send, A5: TaskArgument + Send, A6: TaskArgument + Send, A7: TaskArgument + Send, A8: TaskArgument + Send>(names: Names) -> Args<(A0, A1, A2, A3, A4, A5, A6, A7, A8)> { Args::new(names) }
    pub fn args10<A0: TaskArgument + Send, A1: TaskArgument + Send, A2: TaskArgument + Send, A3: TaskArgument + Send, A4: TaskArgument + Send, A5: TaskArgument + Send, A6: TaskArgument + Send, A7: TaskArgument + Send, A8: TaskArgument + Send, A9: TaskArgument + Send>(names: Names) -> Args<(A0, A1, A2, A3, A4, A5, A6, A7, A8, A9)> { Args::new(names) }
    pub fn args11<A0: TaskArgument + Send, A1: TaskArgument + Send, A2: TaskArgument + Send, A3: TaskArgument + Send, A4: TaskArgument + Send, A5: TaskArgument + Send, A6: TaskArgument + Send, A7: TaskArgument + Send, A8: TaskArgument + Send, A9: TaskArgument + Send, A10: TaskArgument + Send>(names: Names) -> Args<(A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10)> { Args::new(names) }
    pub fn args12<A0: TaskArgument + Send, A1: TaskArgument + Send, A2: TaskArgument + Send, A3: TaskArgument + Send, A4: TaskArgument + Send, A5: TaskArgument + Send, A6: TaskArgument + Send, A7: TaskArgument + Send, A8: TaskArgument + Send, A9: TaskArgument + Send, A10: TaskArgument + Send, A11: TaskArgument + Send>(names: Names) -> Args<(A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11)> { Args::new(names) }
    pub fn args13<A0: TaskArgument + Send, A1: TaskArgument + Send, A2: TaskArgument + Send, A3: TaskArgument + Send, A4: TaskArgument + Send, A5: TaskArgument + Send, A6: TaskArgument + Send, A7: TaskArgument + Send, A8: TaskArgument + Send, A9: TaskArgument + Send, A10: TaskArgument + Send, A11: TaskArgument + Send, A12: TaskArgument + Send>(names: Names) -> Args<(A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12)> { Args::new(names) }
    pub fn args14<A0: TaskArgument + Send, A1: TaskArgument + Send, A2: TaskArgument + Send, A3: TaskArgument + Send, A4: TaskArgument + Send, A5: TaskArgument + Send, A6: TaskArgument + Send, A7: TaskArgument + Send, A8: TaskArgument + Send, A9: TaskArgument + Send, A10: TaskArgument + Send, A11: TaskArgument + Send, A12: TaskArgument + Send, A13: TaskArgument + Send>(names: Names) -> Args<(A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12, A13)> { Args::new(names) }
    pub fn args15<A0: TaskArgument + Send, A1: TaskArgument + Send, A2: TaskArgument + Send, A3: TaskArgument + Send, A4: TaskArgument + Send, A5: TaskArgument + Send, A6: TaskArgument + Send, A7: TaskArgument + Send, A8: TaskArgument + Send, A9: TaskArgument + Send, A10: TaskArgument + Send, A11: TaskArgument + Send, A12: TaskArgument + Send, A13: TaskArgument + Send, A14: TaskArgument + Send>(names: Names) -> Args<(A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12, A13, A14)> { Args::new(names) }
    pub fn args16<A0: TaskArgument + Send, A1: TaskArgument + Send, A2: TaskArgument + Send, A3: TaskArgument + Send, A4: TaskArgument + Send, A5: TaskArgument + Send, A6: TaskArgument + Send, A7: TaskArgument + Send, A8: TaskArgument + Send, A9: TaskArgument + Send, A10: TaskArgument + Send, A11: TaskArgument + Send, A12: TaskArgument + Send, A13: TaskArgument + Send, A14: TaskArgument + Send, A15: TaskArgument + Send>(names: Names) -> Args<(A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12, A13, A14, A15)> { Args::new(names) }
}

/// How a task's output is boxed after a run and encoded for the trip back
/// from a worker. Built by [`returns`], where the bounds are proven once.
// Not public API. Used by generated code.
pub struct Returns<T> {
    boxed: fn(T) -> Output,
    encode: fn(&(dyn std::any::Any + Send)) -> Result<Vec<u8>, CodecError>,
}

impl<T> Returns<T> {
    // Not public API. Used by generated code.
    pub fn finish(&self, value: T) -> Result<Output, TaskError> {
        Ok((self.boxed)(value))
    }

    // Not public API. Used by generated code.
    pub fn encode(&self, output: &(dyn std::any::Any + Send)) -> Result<Vec<u8>, CodecError> {
        (self.encode)(output)
    }

    // Not public API. Used by generated code.
    //
    // The output type's name, for the worker handshake.
    pub fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
}

impl<T> std::fmt::Debug for Returns<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Returns")
    }
}

// Not public API. Used by generated code.
pub fn returns<T: TaskOutput + Send>() -> Returns<T> {
    fn boxed<T: Send + 'static>(value: T) -> Output {
        Box::new(value)
    }
    Returns {
        boxed: boxed::<T>,
        encode: encode_output::<T>,
    }
}

// Not public API. Used by generated code.
pub fn resource<T: TaskResource>(resources: &Resources) -> Result<Resource<T>, TaskError> {
    resources.get::<T>().ok_or_else(|| {
        TaskError::error(format!(
            "resource `{}` is not available here",
            std::any::type_name::<T>()
        ))
    })
}

// Not public API. Used by generated code.
//
// `T` is the output type `#[task]` read from the signature, passed in so the
// generated code has no projection to normalize, which would be a second
// error where the attribute is when `R` is not `Fallible`.
pub fn fallible<R: Fallible<Ok = T>, T>(result: R) -> Result<T, TaskError> {
    result.into_result().map_err(TaskError::error)
}

fn encode_output<T: Serialize + 'static>(
    output: &(dyn std::any::Any + Send),
) -> Result<Vec<u8>, CodecError> {
    match output.downcast_ref::<T>() {
        Some(value) => taskflow_worker::codec::encode(value),
        None => Err(CodecError::Encode(
            "the output is not of the task's type".into(),
        )),
    }
}

/// A return type whose `Err` fails the attempt.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a task's result: it must be a `Result<T, E>` whose error type `E` implements `std::fmt::Display`",
    label = "an attempt that returns `Err` fails with the error's text",
    note = "implement `Display` for the error type, or map the error to one that implements it, such as `String`"
)]
pub trait Fallible {
    /// The success type.
    type Ok;
    /// The value, or the error's text.
    fn into_result(self) -> Result<Self::Ok, String>;
}

#[diagnostic::do_not_recommend]
impl<T, E: Display> Fallible for Result<T, E> {
    type Ok = T;

    fn into_result(self) -> Result<T, String> {
        // `{:#}` shows the whole chain for errors that support it (anyhow).
        self.map_err(|error| format!("{error:#}"))
    }
}
