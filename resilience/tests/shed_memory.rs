//! The memory signal on the process's real resident set, in a test binary of its own (no
//! other test allocates beside it): a budget crossed by an allocation starts shedding at the
//! next sample, and freeing it stops the shedding — stepping down through the hysteresis, not
//! at once.

use floodwall_resilience::shed::{LoadShedder, MemoryPressure, Priority, Signal};

fn resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

#[test]
fn a_memory_budget_crossed_starts_shedding_at_the_next_sample_and_freeing_it_stops_it() {
    const MIB: u64 = 1 << 20;
    let baseline = resident();
    // The budget: 64 MiB above what the process holds now; pressure 1.0 at 90 % of it.
    let budget = baseline + 64 * MIB;
    let memory = MemoryPressure::rss_budget(budget);
    let before = memory.pressure();
    let shedder = LoadShedder::builder()
        .signal(memory)
        .manual_sampling()
        .build()
        .unwrap();
    shedder.sample_now();
    assert_eq!(shedder.level(), 0.0, "under budget: pressure {before:.2}");

    // 96 MiB, every page touched, so it is resident.
    let mut ballast = vec![0u8; (96 * MIB) as usize];
    for page in ballast.chunks_mut(4096) {
        page[0] = 1;
    }
    let pressure = shedder.sample_now();
    let level_after_one = shedder.level();
    println!(
        "resident {} MiB -> {} MiB against a {} MiB budget: pressure {before:.2} -> {pressure:.2}; \
         level after one sample {level_after_one:.2}",
        baseline / MIB,
        resident() / MIB,
        budget / MIB
    );
    assert!(pressure >= 1.0, "{pressure}");
    assert!(
        level_after_one > 0.0,
        "shedding starts at the first sample over the budget"
    );
    let shed = (0..1000)
        .filter(|_| shedder.try_acquire(Priority::Sheddable).is_err())
        .count();
    assert!(shed > 0, "sheddable requests are shed");
    assert!(shedder.try_acquire(Priority::Critical).is_ok());
    for _ in 0..3 {
        shedder.sample_now();
    }
    let peak = shedder.level();

    std::hint::black_box(&ballast);
    drop(ballast);
    let mut levels = Vec::new();
    while shedder.level() > 0.0 && levels.len() < 100 {
        let p = shedder.sample_now();
        levels.push((p * 100.0).round() / 100.0);
    }
    println!(
        "freed: resident {} MiB; the level fell from {peak:.2} to 0 in {} samples (pressures {levels:?})",
        resident() / MIB,
        levels.len()
    );
    assert_eq!(shedder.level(), 0.0);
    assert!(levels.len() >= 2, "it steps down, it does not drop at once");
    assert!(shedder.try_acquire(Priority::Sheddable).is_ok());
}
