use super::*;
use proptest::prelude::*;

/// The reference: each key's TAT in a map, one decision at a time, straight from the formula
/// in the module docs.
#[derive(Default)]
struct Model {
    tats: HashMap<Vec<u8>, f64>,
}

impl Model {
    fn decide(&mut self, now: f64, t_us: f64, burst: u32, cost: u32, key: &[u8]) -> i64 {
        let tat = self.tats.get(key).copied().unwrap_or(0.0);
        let base = tat.max(now);
        let new_tat = base + f64::from(cost) * t_us;
        if new_tat - now <= t_us * f64::from(burst) + 0.0005 {
            self.tats.insert(key.to_vec(), new_tat);
            (new_tat - now).ceil() as i64
        } else {
            -((base - now).ceil() as i64) - 1
        }
    }
}

fn tat(shard: &MemoryShard, key: &[u8]) -> f64 {
    tat_of(shard.get(key)).expect("a TAT")
}

proptest! {
    /// A batch decides as the same decisions sent one by one, and as the reference model:
    /// the same verdicts, and the same TAT left for every key.
    #[test]
    fn a_batch_decides_as_one_by_one_and_as_the_model(
        t_ms in 1u64..2_000,
        burst in 1u32..6,
        cost in 1u32..4,
        rounds in prop::collection::vec(
            (0u64..3_000_000, prop::collection::vec(0u8..5, 1..24)),
            1..8,
        ),
    ) {
        let quota = Quota::new(t_ms * 1_000_000, burst, cost);
        let (mut batched, mut single, mut model) =
            (MemoryShard::default(), MemoryShard::default(), Model::default());
        let mut now = 1_700_000_000_000_000.0;
        for (advance, keys) in rounds {
            now += advance as f64;
            let names: Vec<Vec<u8>> = keys.iter().map(|k| format!("k{k}").into_bytes()).collect();
            let fields: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
            let got = decide(&mut batched, now, quota, &fields).unwrap();
            for (f, g) in fields.iter().zip(&got) {
                let one = decide(&mut single, now, quota, &[f]).unwrap();
                prop_assert_eq!(&one[0], g);
                let want = model.decide(now, t_ms as f64 * 1000.0, burst, cost, f);
                prop_assert_eq!(g, &Reply::Int(want));
            }
            for (k, t) in &model.tats {
                if *t > now {
                    prop_assert_eq!(tat(&batched, k), *t);
                    prop_assert_eq!(tat(&single, k), *t);
                }
            }
        }
    }
}

#[test]
fn a_value_that_is_not_a_tat_fails_its_own_decisions_only() {
    let mut shard = MemoryShard::default();
    shard.insert(b"bad", b"hello");
    let quota = Quota::new(1_000_000_000, 2, 1);
    let r = decide_on(
        &mut shard,
        b"h",
        10_000_000.0,
        quota,
        &[b"bad", b"good", b"bad"],
    )
    .unwrap();
    let err = b"floodwall: the state of bad in h is not a TAT".to_vec();
    assert_eq!(
        r,
        vec![
            Reply::Text(err.clone()),
            Reply::Int(1_000_000),
            Reply::Text(err)
        ]
    );
    assert_eq!(shard.get(b"bad"), Some(&b"hello"[..]), "left as it was");
}

#[test]
fn a_read_error_is_every_decisions_reply() {
    struct WrongType;
    impl Shard for WrongType {
        fn read(&mut self, _: &[&[u8]]) -> Result<Reading, Vec<u8>> {
            Err(b"WRONGTYPE Operation against a key holding the wrong kind of value".to_vec())
        }
        fn scan(&mut self, _: &[u8], _: u32) -> Result<Scan, Vec<u8>> {
            unreachable!("nothing is written")
        }
        fn field_count(&mut self) -> Result<u64, Vec<u8>> {
            unreachable!("nothing is written")
        }
        fn delete(&mut self, _: &[&[u8]]) -> Result<(), Vec<u8>> {
            unreachable!("nothing is written")
        }
        fn write(
            &mut self,
            _: &[&[u8]],
            _: &[(usize, [u8; 8])],
            _: &[(&'static [u8], Vec<u8>)],
        ) -> Result<(), Vec<u8>> {
            unreachable!("nothing is written")
        }
        fn expire(&mut self, _: i64) -> Result<(), Vec<u8>> {
            unreachable!("nothing is written")
        }
    }
    let r = decide(&mut WrongType, 1.0, Quota::new(1_000, 1, 1), &[b"a", b"b"]).unwrap();
    assert_eq!(r.len(), 2);
    assert!(
        r.iter()
            .all(|r| matches!(r, Reply::Text(t) if t.starts_with(b"WRONGTYPE")))
    );
}

/// `:d`, when the hash's next sweep step may start.
fn next_step(shard: &MemoryShard) -> f64 {
    std::str::from_utf8(shard.get(b":d").expect("a step was taken"))
        .unwrap()
        .parse()
        .unwrap()
}

/// Stale states go in sweep steps of SWEEP_COUNT fields, spread over a pass of
/// SWEEP_PASS_US; live ones and the hash's own fields stay; the TTL follows the latest TAT.
#[test]
fn the_sweep_removes_stale_states_step_by_step() {
    let mut shard = MemoryShard::default();
    let quota = Quota::new(1_000_000, 1, 1); // T = 1 ms
    let mut now = 1_000_000_000.0;
    let stale: Vec<Vec<u8>> = (0..300).map(|i| format!("old{i}").into_bytes()).collect();
    for f in &stale {
        shard.insert(f, &pack(now - 1.0));
    }
    let mut steps = 0;
    let mut spacings = Vec::new();
    while stale.iter().any(|f| shard.get(f).is_some()) {
        decide(&mut shard, now, quota, &[b"live"]).unwrap();
        steps += 1;
        assert!(steps <= 3, "300 stale fields take 3 steps of 128");
        spacings.push((next_step(&shard) - now).round());
        now = next_step(&shard);
    }
    assert_eq!(steps, 3);
    // The hash held 300 stale fields at the first step: 3 steps a pass, a third of a pass
    // apart; then 172 with `live` and the own fields (2 steps), then 44 (one).
    let pass = SWEEP_PASS_US;
    assert_eq!(spacings, [(pass / 3.0).round(), (pass / 2.0).round(), pass]);
    assert!(shard.get(b"live").is_some() && shard.get(b":c").is_some());
    // Latest TAT 1 ms ahead: the hash expires 1 s after it, +1 ms.
    assert_eq!(shard.ttl_ms, Some(1_002));
    // Before the next step is due, no step starts.
    shard.insert(b"old-again", &pack(now - 1.0));
    decide(&mut shard, now - 1.0, quota, &[b"other"]).unwrap();
    assert!(shard.get(b"old-again").is_some());
}

#[test]
fn a_hash_tells_its_limits_shard_count() {
    assert_eq!(shards_of(b"fw-rl:v1:{#2.16.3.6144}:api"), 16);
    assert_eq!(shards_of(b"fw-rl:v1:{#2.1.0.0}:api"), 1);
    for other in [
        &b"plain"[..],
        b"{#2.}",
        b"{#2.0.1.2}",
        b"{#2.x.1}",
        b"{#2.12",
    ] {
        assert_eq!(shards_of(other), 1, "{}", String::from_utf8_lossy(other));
    }
}

/// A pass takes at least SWEEP_PASS_US, whatever the hash's size; with S shards, a large
/// hash's steps come S times further apart than with one.
#[test]
fn a_pass_takes_a_second_or_s_steps_of_2_ms_each() {
    let quota = Quota::new(1_000_000, 1, 1);
    let now = 1_000_000_000.0;
    for (hash, shards) in [
        (&b"x:{#2.16.0.0}:api"[..], 16.0),
        (b"x:{#2.1.0.0}:api", 1.0),
    ] {
        let mut shard = MemoryShard::default();
        decide_on(&mut shard, hash, now, quota, &[b"a"]).unwrap();
        // A small hash: its pass is one step, a second apart.
        let d = next_step(&shard);
        assert_eq!(d, now + SWEEP_PASS_US);
        // 5,000 live fields, with `a` and the own fields 40 steps of 128: a pass of 1 s
        // spaces them 25 ms apart, and 16 shards at least 32 ms.
        for i in 0..5_000 {
            shard.insert(format!("k{i}").as_bytes(), &pack(now + 1e9));
        }
        decide_on(&mut shard, hash, d, quota, &[b"a"]).unwrap();
        let spacing = next_step(&shard) - d;
        let expected = (shards * SWEEP_STEP_US).max(SWEEP_PASS_US / 40.0);
        assert_eq!(spacing, expected, "{}", String::from_utf8_lossy(hash));
        assert_eq!(spacing, sweep_spacing(shards as u32, 5_005));
    }
}
