//! The short chaos run of the test suite: every kind of fault at least once
//! (one round of eight) while late writers commit out of txid order, then the
//! whole history checked. Needs what `deploy/local/test` provides: Postgres's
//! server binaries, redis-server, and Apache Kafka's jars with a JRE.
//! `CHAOS_SEED` picks another schedule.

use std::process::Command;

#[test]
fn a_short_chaos_run_finds_no_violation() {
    let seed = std::env::var("CHAOS_SEED").unwrap_or_else(|_| "1".into());
    let dir = std::env::temp_dir().join(format!("nova-chaos-test-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(["--duration", "45s", "--fault-every", "4s", "--seed", &seed])
        .args(["--late-writers", "8"])
        .arg("--dir")
        .arg(&dir)
        .output()
        .expect("the chaos binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the chaos run failed; services' logs in {}",
        dir.display()
    );
    assert!(stdout.contains("chaos: PASSED"));
    let timeline = stdout
        .split("fault timeline:")
        .nth(1)
        .and_then(|rest| rest.split("faults injected:").next())
        .expect("a fault timeline");
    for fault in [
        "broker stopped (SIGTERM)",
        "broker killed (SIGKILL)",
        "broker frozen (SIGSTOP), resumed",
        "leading relay killed",
        "leading relay frozen, resumed",
        "Postgres connections killed",
        "Postgres restarted",
        "Redis stopped",
    ] {
        assert!(
            timeline.contains(fault),
            "{fault} was not injected:\n{timeline}"
        );
    }
    assert!(!timeline.contains("injection failed"), "{timeline}");
    let late: u64 = stdout
        .split("late commits: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .expect("a count of late commits");
    assert!(late > 0, "no late writer committed");
    let _ = std::fs::remove_dir_all(&dir);
}
