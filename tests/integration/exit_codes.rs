//! The README's promises about the command line, held against the real binary: bad
//! configuration exits 64 with one line before any port is bound, and every serve flag has a
//! configuration key (named in its help) that the shipped conf file documents.

use std::process::Command;

const CONF: &str = include_str!("../../conf/spark-shuffle-agent.conf");

#[test]
fn a_missing_root_exits_64_before_any_port_is_bound() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Held busy: had the agent bound the metrics port before checking its roots, it would
    // fail on this port instead (exit 1, "binding the metrics port").
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to hold");
    let port = held.local_addr().expect("addr").port().to_string();
    let missing = tmp.path().join("no-such-root");
    let state = tmp.path().join("state");
    let output = Command::new(env!("CARGO_BIN_EXE_spark-shuffle-agent"))
        .args(["--bind", "127.0.0.1", "--port", "0", "--metrics-port", &port])
        .arg("--root")
        .arg(&missing)
        .arg("--state-dir")
        .arg(&state)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run the binary");
    assert_eq!(output.status.code(), Some(64), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: invalid value") && stderr.contains("agent.roots"), "{stderr}");
}

#[test]
fn a_bad_flag_value_exits_64_with_one_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_spark-shuffle-agent"))
        .args(["--port", "70000"])
        .output()
        .expect("run the binary");
    assert_eq!(output.status.code(), Some(64));
    assert_eq!(String::from_utf8_lossy(&output.stderr).lines().count(), 1);
}

#[test]
fn every_serve_flag_names_a_config_key_the_conf_file_documents() {
    let output = Command::new(env!("CARGO_BIN_EXE_spark-shuffle-agent"))
        .args(["serve", "--help"])
        .output()
        .expect("run the binary");
    let help = String::from_utf8_lossy(&output.stdout);
    let flags: Vec<&str> = help.lines().filter(|l| l.trim_start().starts_with("--")).collect();
    assert!(flags.len() >= 9, "{help}");
    for line in flags {
        let flag = line.split_whitespace().next().expect("a flag");
        if flag == "--config" {
            continue; // the file itself
        }
        let key = line
            .split('(')
            .skip(1)
            .map(|rest| rest.split([')', ';']).next().unwrap_or(""))
            .find(|k| k.starts_with("agent.") || k.starts_with("spark."))
            .unwrap_or_else(|| panic!("{flag} names no config key: {line}"));
        let documented = CONF.lines().any(|l| {
            let l = l.trim_start_matches('#').trim_start();
            l.split_whitespace().next() == Some(key)
        });
        assert!(documented, "{flag}'s key {key} is not in conf/spark-shuffle-agent.conf");
    }
}
