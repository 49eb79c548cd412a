//! The native command on a Redis Cluster node: which of a batch's hashes it works on through
//! Redis's key API, and which through called commands.

use std::time::Duration;

use floodwall_testkit::RedisCluster;

/// A segment of `FLOODWALL.GCRA` for `hash`: 5 per 10^8 s, cost 1, one field.
fn segment(cmd: &mut redis::Cmd, hash: &str, field: &str) {
    let t = Duration::from_secs(100_000_000 / 5).as_nanos() as u64;
    cmd.arg(hash).arg(t).arg(5).arg(1).arg(1).arg(field);
}

/// A node's batch over several slots works on every hash the node holds through the key API
/// — not only the route's, as Redis checked that one — so a batch costs no called command
/// once its hashes exist; a hash the node does not hold goes to a called command, which
/// answers that it is another node's (it wrote nothing there). After `FLUSHALL` the node
/// holds none of them: called commands write them anew, and they are held again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_works_every_hash_it_holds_through_the_key_api() {
    let test = "a_node_works_every_hash_it_holds_through_the_key_api";
    let Some(cluster) = RedisCluster::start_native_or_skip(test, 3) else {
        return;
    };
    let node = &cluster.nodes()[0];
    let client = redis::Client::open(node.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // Hashes this node serves (answered, not MOVED), and one it does not.
    let (mut ours, mut theirs) = (Vec::new(), None);
    for i in 0.. {
        let name = format!("h{i}");
        let served = redis::cmd("EXISTS")
            .arg(&name)
            .query_async::<i64>(&mut conn)
            .await
            .is_ok();
        match served {
            true if ours.len() < 3 => ours.push(name),
            false if theirs.is_none() => theirs = Some(name),
            _ => {}
        }
        if ours.len() == 3 && theirs.is_some() {
            break;
        }
    }
    let theirs = theirs.unwrap();
    // The two hashes after the route exist: each written once by a command it routes.
    for hash in &ours[1..] {
        let mut cmd = redis::cmd("FLOODWALL.GCRA");
        cmd.arg(hash).arg(1);
        segment(&mut cmd, hash, "u");
        let _: Vec<redis::Value> = cmd.query_async(&mut conn).await.unwrap();
    }
    let called = || {
        node.command_calls(&["hmget", "hset", "hdel", "pexpire"])
            .unwrap()
    };
    let before = called();
    let mut cmd = redis::cmd("FLOODWALL.GCRA");
    cmd.arg(&ours[0]).arg(1);
    for hash in &ours {
        segment(&mut cmd, hash, "v");
    }
    segment(&mut cmd, &theirs, "v");
    let replies: Vec<redis::Value> = cmd.query_async(&mut conn).await.unwrap();
    let after = called();
    println!(
        "a batch of 3 held hashes (route {}) and 1 of another node's: {} called commands; \
         replies {replies:?}",
        ours[0],
        after - before
    );
    // The hash of another node is refused before any command runs (Redis checks a called
    // command's key first), so no command at all: the held ones took none.
    assert_eq!(
        after - before,
        0,
        "no called command for a hash this node holds"
    );
    assert!(
        replies[..3]
            .iter()
            .all(|r| matches!(r, redis::Value::Int(v) if *v >= 0))
    );
    assert_eq!(
        replies[3],
        redis::Value::BulkString(b"floodwall:elsewhere".to_vec())
    );
    for hash in &ours {
        let v: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(hash)
            .arg("v")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(v.is_some(), "{hash}'s decision was written");
    }

    // FLUSHALL: the node holds none of the hashes now. The same batch decides afresh (each
    // field's first decision again), the two hashes outside the route's slot through called
    // commands, which write them anew; the next batch finds all three held again.
    node.command(&["FLUSHALL"]).unwrap();
    let batch = || {
        let mut cmd = redis::cmd("FLOODWALL.GCRA");
        cmd.arg(&ours[0]).arg(1);
        for hash in &ours {
            segment(&mut cmd, hash, "v");
        }
        cmd
    };
    let before = called();
    let fresh: Vec<redis::Value> = batch().query_async(&mut conn).await.unwrap();
    let after_flush = called() - before;
    let before = called();
    let again: Vec<redis::Value> = batch().query_async(&mut conn).await.unwrap();
    let held_again = called() - before;
    println!(
        "after FLUSHALL: {after_flush} called commands for the batch that wrote the hashes \
         anew, {held_again} for the next; replies {fresh:?} then {again:?}"
    );
    assert_eq!(fresh[..], replies[..3], "every field decided afresh");
    assert!(
        after_flush >= 4,
        "HMGET and HSET for each hash outside the route's slot"
    );
    assert_eq!(held_again, 0, "held again: the key API");
    for (first, second) in fresh.iter().zip(&again) {
        let (redis::Value::Int(first), redis::Value::Int(second)) = (first, second) else {
            panic!("GCRA verdicts are integers: {first:?}, {second:?}");
        };
        assert!(
            second > first,
            "the second decision sees the first: {first} then {second}"
        );
    }
}
