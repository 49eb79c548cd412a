//! Property tests: key encoding is injective and bounded; a store's own keys never meet a
//! user's; ManualClock clones agree.

use std::collections::HashMap;
use std::time::Duration;

use floodwall_core::key::{Key, Keyspace, MAX_KEY_LEN, encode_part};
use floodwall_core::{Clock, ManualClock};
use proptest::prelude::*;

/// Bytes biased towards the characters the encoding treats specially.
fn part() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => prop::sample::select(b"%:{}#a0 \n".to_vec()),
        1 => any::<u8>(),
    ];
    prop_oneof![
        6 => prop::collection::vec(byte.clone(), 0..12),
        1 => prop::collection::vec(byte, 20..200),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Input {
    namespace: String,
    version: u32,
    routing: Vec<u8>,
    parts: Vec<Vec<u8>>,
}

fn input() -> impl Strategy<Value = Input> {
    (
        prop::sample::select(vec!["a", "ab", "user", "a.b-c_d"]),
        prop::sample::select(vec![0u32, 1, 12, u32::MAX]),
        part(),
        prop::collection::vec(part(), 0..6),
    )
        .prop_map(|(ns, version, routing, parts)| Input {
            namespace: ns.to_owned(),
            version,
            routing,
            parts,
        })
}

fn build(i: &Input) -> Key {
    let ks = Keyspace::new(&i.namespace, i.version).unwrap();
    i.parts
        .iter()
        .fold(ks.key(&i.routing), |b, p| b.part(p))
        .build()
}

/// Reference decoder for keys with no hashed part: recovers the input exactly.
fn decode(key: &str) -> Option<Input> {
    let (namespace, rest) = key.split_once(":v")?;
    let (version, rest) = rest.split_once(":{")?;
    let (routing, rest) = rest.split_once('}')?;
    let decode_part = |p: &str| -> Option<Vec<u8>> {
        if p == "%" {
            return Some(Vec::new());
        }
        if p.starts_with('#') {
            return None; // hashed: not reversible
        }
        let bytes = p.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                out.push(u8::from_str_radix(p.get(i + 1..i + 3)?, 16).ok()?);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        Some(out)
    };
    let parts = if rest.is_empty() {
        Vec::new()
    } else {
        let rest = rest.strip_prefix(':')?;
        if rest.starts_with("##") {
            return None;
        }
        rest.split(':')
            .map(decode_part)
            .collect::<Option<Vec<_>>>()?
    };
    Some(Input {
        namespace: namespace.to_owned(),
        version: version.parse().ok()?,
        routing: decode_part(routing)?,
        parts,
    })
}

/// Redis Cluster's rule: the content between the first '{' and the first '}' after it.
fn redis_hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')? + open + 1;
    let tag = &key[open + 1..close];
    (!tag.is_empty()).then_some(tag)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]

    #[test]
    fn keys_are_bounded_and_keep_their_hash_tag(i in input()) {
        let key = build(&i);
        prop_assert!(key.as_str().len() <= MAX_KEY_LEN, "{} bytes", key.as_str().len());
        prop_assert!(key.as_str().is_ascii());
        prop_assert_eq!(redis_hash_tag(key.as_str()), Some(key.hash_tag()));
        // Every key with the same routing part shares the tag, whatever the other parts.
        let bare = Keyspace::new(&i.namespace, i.version).unwrap().key(&i.routing).build();
        prop_assert_eq!(bare.hash_tag(), key.hash_tag());
    }

    #[test]
    fn unhashed_keys_decode_to_their_input(i in input()) {
        let key = build(&i);
        if let Some(decoded) = decode(key.as_str()) {
            prop_assert_eq!(decoded, i);
        } else {
            // Only keys holding a hashed part or section may be undecodable.
            prop_assert!(key.as_str().contains('#'), "{key}");
        }
    }

    #[test]
    fn distinct_inputs_give_distinct_keys(inputs in prop::collection::vec(input(), 2..40)) {
        let mut seen: HashMap<Key, Input> = HashMap::new();
        for i in inputs {
            let key = build(&i);
            if let Some(prev) = seen.get(&key) {
                prop_assert_eq!(prev, &i, "two inputs share the key {}", key);
            }
            seen.insert(key, i);
        }
    }

    #[test]
    fn a_store_key_never_meets_a_user_routed_key(
        i in input(),
        tag in "[A-Za-z0-9.-]{1,32}",
    ) {
        prop_assume!(!(tag.len() == 32 && tag.bytes().all(|b| b.is_ascii_hexdigit())));
        let user = build(&i);
        let ks = Keyspace::new(&i.namespace, i.version).unwrap();
        let store = i.parts.iter().fold(ks.store_key(&tag), |b, p| b.part(p)).build();
        prop_assert_ne!(user.hash_tag(), store.hash_tag());
        prop_assert_ne!(&user, &store);
        prop_assert_eq!(redis_hash_tag(store.as_str()), Some(store.hash_tag()));
        prop_assert!(store.as_str().len() <= MAX_KEY_LEN);
    }

    #[test]
    fn an_encoded_part_is_the_routing_part_of_its_key(i in input()) {
        let key = Keyspace::new(&i.namespace, i.version).unwrap().key(&i.routing).build();
        let encoded = encode_part(&i.routing);
        prop_assert_eq!(key.hash_tag(), encoded.as_str());
        let structural = encoded.bytes().any(|b| matches!(b, b':' | b'{' | b'}'));
        prop_assert!(!structural, "{}", encoded);
    }

    #[test]
    fn manual_clock_clones_agree(ops in prop::collection::vec((0usize..4, 0u64..5_000_000_000), 0..64)) {
        let clocks: Vec<ManualClock> = {
            let first = ManualClock::new();
            (0..4).map(|_| first.clone()).collect()
        };
        let mut model: u64 = 0;
        for (who, nanos) in ops {
            clocks[who].advance(Duration::from_nanos(nanos));
            model += nanos;
            for c in &clocks {
                prop_assert_eq!(c.now_nanos(), model);
            }
        }
    }
}

#[test]
fn manual_clock_clones_agree_across_threads() {
    let clock = ManualClock::new();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let c = clock.clone();
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    c.advance(Duration::from_nanos(3));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(clock.now_nanos(), 8 * 1000 * 3);
}
