//! A `Resource<T>` parameter is injected, not an argument: `enqueue` and
//! `call` take only the data arguments.
use taskflow::{Resource, task};

struct Mailer {
    host: String,
}

#[task]
async fn send(mailer: Resource<Mailer>, to: String) -> String {
    format!("{to} via {}", mailer.host)
}

#[task(retries = 1)]
fn count(mailer: taskflow::Resource<Mailer>) -> usize {
    mailer.host.len()
}

fn main() {
    let _: fn(String) -> taskflow::TaskCall<String> = send::call;
    let _: fn() -> taskflow::TaskCall<usize> = count::call;
    let mailer = Resource::new(Mailer {
        host: "smtp.local".into(),
    });
    assert_eq!(count(mailer), 10);
    assert!(send::NAME.ends_with("::send"));
}
