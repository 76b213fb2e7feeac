//! Parameters named `_unused` or `_`, or not in snake case, make the
//! generated code raise no warning: it binds arguments under names of its
//! own, hygienically, and never uses the user's.
#![deny(warnings)]

use taskflow::task;

#[task]
pub async fn ignores(_unused: u32, _: String, kept: u8) -> u8 {
    kept
}

#[task]
fn counts(_unused: Vec<u8>, mut n: u64) -> u64 {
    n += 1;
    n
}

#[allow(non_snake_case)]
#[task]
fn shouts(ID: u64, r#type: String) -> String {
    format!("{ID} {type}")
}

/// A parameter may share the task's name, and one may look generated.
#[task]
fn echo(echo: u32, __arg0: u32) -> u32 {
    echo + __arg0
}

fn main() {
    let _: fn(u32, String, u8) -> taskflow::TaskCall<u8> = ignores::call;
    let _: fn(Vec<u8>, u64) -> taskflow::TaskCall<u64> = counts::call;
    assert_eq!(counts(vec![], 1), 2);
    assert_eq!(shouts(7, "x".into()), "7 x");
    assert_eq!(echo(1, 2), 3);
}
