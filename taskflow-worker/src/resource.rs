//! Shared resources: values a task uses that are not its arguments.
//!
//! A connection pool or an HTTP client cannot be serialized into a task's
//! arguments. Instead the application registers it once, by type, and a task
//! asks for it with a parameter of type [`Resource<T>`]. The `#[task]` macro
//! leaves such parameters out of `enqueue` and fills them in when the task
//! runs. Each task entry lists the types it needs, so a manager that lacks one
//! refuses the enqueue instead of failing deep inside a run.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// A shared handle to a resource of type `T`, injected into a task.
///
/// Derefs to `T`; cloning shares the same value.
///
/// ```
/// use taskflow_worker::Resource;
/// struct Mailer { host: &'static str }
/// let mailer = Resource::new(Mailer { host: "smtp.local" });
/// assert_eq!(mailer.host, "smtp.local");
/// ```
pub struct Resource<T: ?Sized>(Arc<T>);

impl<T> Resource<T> {
    /// Wraps `value`; handy for calling a task function directly.
    pub fn new(value: T) -> Self {
        Resource(Arc::new(value))
    }
}

impl<T: ?Sized> Resource<T> {
    /// The shared pointer inside.
    pub fn into_inner(self) -> Arc<T> {
        self.0
    }
}

impl<T: ?Sized> From<Arc<T>> for Resource<T> {
    fn from(value: Arc<T>) -> Self {
        Resource(value)
    }
}

impl<T: ?Sized> Clone for Resource<T> {
    fn clone(&self) -> Self {
        Resource(self.0.clone())
    }
}

impl<T: ?Sized> Deref for Resource<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Resource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Resource").field(&&*self.0).finish()
    }
}

/// The type a task needs as a resource, as recorded in its entry.
#[derive(Clone, Copy)]
pub struct ResourceKey {
    type_id: fn() -> TypeId,
    type_name: fn() -> &'static str,
}

impl ResourceKey {
    /// The key for `T`.
    pub const fn of<T: ?Sized + 'static>() -> Self {
        ResourceKey {
            type_id: TypeId::of::<T>,
            type_name: std::any::type_name::<T>,
        }
    }

    /// The type's id.
    pub fn type_id(&self) -> TypeId {
        (self.type_id)()
    }

    /// The type's name, for messages.
    pub fn type_name(&self) -> &'static str {
        (self.type_name)()
    }
}

impl fmt::Debug for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_name())
    }
}

/// A set of resources keyed by type.
///
/// ```
/// use taskflow_worker::Resources;
/// let mut resources = Resources::new();
/// resources.insert(String::from("postgres://localhost/app"));
/// assert_eq!(resources.get::<String>().unwrap().as_str(), "postgres://localhost/app");
/// assert!(resources.get::<u64>().is_none());
/// ```
#[derive(Clone, Default)]
pub struct Resources {
    by_type: HashMap<TypeId, Entry>,
}

#[derive(Clone)]
struct Entry {
    value: Arc<dyn Any + Send + Sync>,
    type_name: &'static str,
}

impl Resources {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value`, replacing any earlier resource of the same type.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.insert_arc(Arc::new(value));
    }

    /// Adds a value that is already shared.
    pub fn insert_arc<T: Send + Sync + 'static>(&mut self, value: Arc<T>) {
        let entry = Entry {
            value,
            type_name: std::any::type_name::<T>(),
        };
        self.by_type.insert(TypeId::of::<T>(), entry);
    }

    /// The resource of type `T`.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<Resource<T>> {
        let entry = self.by_type.get(&TypeId::of::<T>())?;
        entry.value.clone().downcast::<T>().ok().map(Resource)
    }

    /// Whether a resource of this key's type is present.
    pub fn contains(&self, key: &ResourceKey) -> bool {
        self.by_type.contains_key(&key.type_id())
    }

    /// The first of `keys` that is missing here.
    pub fn first_missing<'k>(&self, keys: &'k [ResourceKey]) -> Option<&'k ResourceKey> {
        keys.iter().find(|key| !self.contains(key))
    }
}

impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.by_type.values().map(|entry| entry.type_name))
            .finish()
    }
}
