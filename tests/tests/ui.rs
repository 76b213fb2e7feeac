//! Compile errors of `#[task]`, one file per mistake, with reviewed snapshots;
//! and declarations that must keep compiling.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
    t.pass("ui/pass/*.rs");
}
