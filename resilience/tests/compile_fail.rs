//! A wrong stack is a compile error that names the cause: the trait the piece lacks, and
//! what it does take (`#[diagnostic::on_unimplemented]` on `Classify`, `RetryPolicy` and
//! `RetryRequest`). The expected messages are in `tests/ui/*.stderr`.

#[test]
fn a_wrong_stack_names_the_unimplemented_trait_and_the_cause() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
