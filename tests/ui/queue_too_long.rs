use taskflow::task;

#[task(queue = "emails-to-every-customer-who-signed-up-before-the-spring-release-and-asked-for-a-weekly-digest-of-their-account-activity-and-their-invoices")]
async fn ping() {}

// With bad options the function and its companion are still emitted, with
// defaults, so call sites keep compiling while the attribute is fixed.
#[allow(dead_code)]
fn call_sites() {
    let _ = ping();
    let _ = ping::enqueue();
    let _ = ping::NAME;
}

fn main() {}
