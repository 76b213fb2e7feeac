use taskflow::{Resource, task};

struct Db;

// A scheduled task is enqueued with no arguments at each tick: a
// `Resource<T>` parameter is fine, a data argument is refused.
#[task(every = "5m")]
async fn cleanup(db: Resource<Db>, older_than_days: u32) {
    let _ = (db, older_than_days);
}

fn main() {}
