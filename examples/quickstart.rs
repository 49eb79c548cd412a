//! floodwall in one page, with no server: run `cargo run --example quickstart`.
//!
//! Shows what exists so far: injectable clocks and collision-free, hash-tagged keys.

use std::time::Duration;

use floodwall::core::{Clock, Keyspace, ManualClock, SystemClock};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Time: production reads the system clock; tests move a manual clock by hand.
    let system = SystemClock::new();
    let t0 = system.now_nanos();
    let manual = ManualClock::new();
    let component_view = manual.clone(); // clones share one time
    manual.advance(Duration::from_secs(30));
    println!(
        "manual clock after advance(30s): {:?} (system clock moved {:?} meanwhile)",
        Duration::from_nanos(component_view.now_nanos()),
        system.elapsed_since(t0)
    );

    // Keys: namespace + version + hash-tagged routing part + parts, safe for user input.
    let users = Keyspace::new("user", 2)?;
    let plain = users.key("42").part("profile").build();
    let hostile = users.key("evil}{tag").part("a:b").build();
    let huge = users.key("x".repeat(5000)).build();
    println!(
        "plain key:    {plain}   (Redis Cluster hash tag: {:?})",
        plain.hash_tag()
    );
    println!(
        "hostile key:  {hostile}   (hash tag: {:?})",
        hostile.hash_tag()
    );
    println!("10 KB input:  {huge}   ({} bytes)", huge.as_str().len());
    let v3 = users.with_version(3).key("42").part("profile").build();
    println!("after a schema bump: {v3} (old keys are never read again)");
    Ok(())
}
