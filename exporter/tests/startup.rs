//! Start-up: a broken configuration is refused with the file, line and key
//! named, before anything is served.

mod common;

use common::*;

fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    match Exporter::try_start(args, env) {
        Ok(_) => panic!("the exporter started with {args:?}"),
        Err(log) => log,
    }
}

fn query_file(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("queries.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

const GOOD: &str = r#"[[query]]
name = "a"
sql = "SELECT 1::float8 AS n"
[[query.metric]]
name = "shop_things"
help = "Things."
type = "gauge"
value = "n"
"#;

#[test]
fn syntax_error_in_query_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = query_file(
        dir.path(),
        &GOOD.replace("sql = \"SELECT 1::float8 AS n\"", "sql = \"SELECT 1"),
    );
    let log = refused(&["--business.queries", &file], &[]);
    assert!(log.contains(&file) && log.contains("line 3"), "{log}");
}

#[test]
fn unknown_key_in_query_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = query_file(
        dir.path(),
        &GOOD.replace("value = \"n\"", "value = \"n\"\nunits = \"usd\""),
    );
    let log = refused(&["--business.queries", &file], &[]);
    assert!(
        log.contains(&file) && log.contains("line 9") && log.contains("units"),
        "{log}"
    );
}

#[test]
fn duplicate_metric_name_in_query_file() {
    let dir = tempfile::tempdir().unwrap();
    let twice = format!("{GOOD}\n{}", GOOD.replace("name = \"a\"", "name = \"b\""));
    let file = query_file(dir.path(), &twice);
    let log = refused(&["--business.queries", &file], &[]);
    assert!(
        log.contains(&format!(
            "{file}: line 14, key `query.metric.name`: duplicate metric name \"shop_things\""
        )),
        "{log}"
    );
}

#[test]
fn missing_query_file_and_bad_flags() {
    let log = refused(&["--business.queries", "/nonexistent/q.toml"], &[]);
    assert!(log.contains("/nonexistent/q.toml"), "{log}");
    let log = refused(&["--postgres.interval", "soon"], &[]);
    assert!(
        log.contains("--postgres.interval") && log.contains("soon"),
        "{log}"
    );
}

#[test]
fn web_config_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.yml");
    std::fs::write(&path, "basic_auth_users:\n  prom: not-a-hash\n").unwrap();
    let log = refused(&["--web.config.file", path.to_str().unwrap()], &[]);
    assert!(
        log.contains(path.to_str().unwrap()) && log.contains("basic_auth_users.prom"),
        "{log}"
    );
    std::fs::write(
        &path,
        "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n",
    )
    .unwrap();
    let log = refused(&["--web.config.file", path.to_str().unwrap()], &[]);
    assert!(log.contains("/nonexistent.crt"), "{log}");
}

#[test]
fn dsn_from_both_env_and_file_is_refused_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dsn");
    std::fs::write(&file, "postgres://u:filepw@127.0.0.1/db\n").unwrap();
    let log = refused(
        &["--postgres.dsn-file", file.to_str().unwrap()],
        &[(
            "BOOKEDBARBER_POSTGRES_DSN",
            "postgres://u:envpw@127.0.0.1/db",
        )],
    );
    assert!(log.contains("use one of them"), "{log}");
    assert!(!log.contains("filepw") && !log.contains("envpw"), "{log}");
    let log = refused(
        &[],
        &[(
            "BOOKEDBARBER_POSTGRES_DSN",
            "postgres://u:pw@127.0.0.1:port/db",
        )],
    );
    assert!(log.contains("not valid") && !log.contains(":pw@"), "{log}");
}

#[test]
fn check_config_accepts_the_builtin_queries() {
    let out = std::process::Command::new(EXPORTER)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "configuration is valid"
    );
}

#[test]
fn every_flag_in_help_is_in_the_readme() {
    let help = std::process::Command::new(exporter_bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let flags: std::collections::BTreeSet<&str> = help
        .split(|c: char| c.is_whitespace() || ",[=()".contains(c))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .filter(|w| *w != "--help" && *w != "--version")
        .collect();
    assert!(flags.len() > 30, "too few flags found in --help: {flags:?}");
    let missing: Vec<&&str> = flags
        .iter()
        .filter(|f| !readme.contains(&format!("`{f}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "flags of --help missing from README.md's table: {missing:?}"
    );
}

#[test]
fn json_log_lines_have_each_key_once() {
    let mut child = std::process::Command::new(exporter_bin())
        .args([
            "--web.listen-address",
            "127.0.0.1:0",
            "--log.format",
            "json",
            "--log.level",
            "debug",
        ])
        // A Redis URL to a closed port: the log gets server= fields and
        // collection failures.
        .env("BOOKEDBARBER_REDIS_URL", "redis://127.0.0.1:1/0")
        .env_remove("BOOKEDBARBER_POSTGRES_DSN")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    let mut checked = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        // serde_json keeps the last of duplicate keys: count them in the text.
        for key in object.keys() {
            let n = line.matches(&format!("\"{key}\":")).count();
            assert_eq!(n, 1, "key {key:?} appears {n} times in {line}");
        }
        checked += 1;
    }
    assert!(checked >= 3, "too few log lines:\n{text}");
    assert!(text.contains("\"server\":"), "{text}");
}
