//! What differs between two configs, told from their spec values, never from the file text:
//! two files that write the same settings differently (`1000ms` for `1s`, a default spelt
//! out inside a block) are the same config. Specs compare with `PartialEq`; a spec built from
//! something without a useful equality keeps what it was built from and compares that (a
//! canary's `definition`, a listener's certificate paths rather than the key read from them,
//! whether `workers` is `auto` rather than the cores found).

use std::time::Duration;

use super::spec::{Config, DEFAULT_CALL_LOG_MAX_AGE, DEFAULT_CALL_LOG_MAX_ROWS, DEFAULT_CALL_LOG_QUEUE};

impl Config {
    /// The top-level keys, in file order, whose settings differ in `next` and take effect
    /// only on a restart: the sockets and threads the process runs on, and its writers. A
    /// key added or removed counts even when it writes the default value.
    pub fn restart_only_changes(&self, next: &Config) -> Vec<&'static str> {
        let sets = |config: &Config, key| config.restart_keys.contains(&key);
        let same = [
            ("listeners", self.listeners == next.listeners),
            ("admin", self.admin == next.admin),
            ("workers", workers(self) == workers(next)),
            ("limits", self.limits == next.limits),
            ("shutdown_grace", self.shutdown_grace == next.shutdown_grace),
            ("access_log", self.access_log == next.access_log),
            ("data_dir", self.data_dir == next.data_dir),
            ("call_log", call_log(self) == call_log(next)),
            ("tracing", self.tracing == next.tracing),
            ("cluster", self.cluster == next.cluster),
        ];
        same.into_iter()
            .filter(|&(key, same)| !same || sets(self, key) != sets(next, key))
            .map(|(key, _)| key)
            .collect()
    }
}

/// `workers` as written: a number, or `None` for `auto` (the cores found at load are not
/// compared: they are the machine's, not the config's).
fn workers(config: &Config) -> Option<usize> {
    (!config.workers_auto).then_some(config.workers)
}

/// The call log's own settings (queue, max age, max rows), without its store (that is
/// `data_dir`'s or `cluster`'s change); `None` when `call_log.enabled` is false. Without a
/// `data_dir` or `cluster.postgres` a config has no `call_log` block (validation requires
/// one), so its settings are the defaults either would turn on.
fn call_log(config: &Config) -> Option<(usize, Duration, u64)> {
    let has_store =
        config.data_dir.is_some() || config.cluster.as_ref().is_some_and(|c| c.postgres.is_some());
    match &config.call_log {
        Some(c) => Some((c.queue, c.max_age, c.max_rows)),
        None if has_store => None,
        None => Some((
            DEFAULT_CALL_LOG_QUEUE,
            DEFAULT_CALL_LOG_MAX_AGE,
            DEFAULT_CALL_LOG_MAX_ROWS,
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;

    const BASE: &str = "listeners: [{ name: public, bind: \"127.0.0.1:0\" }]\n";

    fn changes(old: &str, new: &str) -> Vec<&'static str> {
        let load = |extra: &str| load_str(&format!("{BASE}{extra}"), "t.yaml").unwrap();
        load(old).restart_only_changes(&load(new))
    }

    #[test]
    fn the_same_settings_written_differently_are_no_change() {
        let (old, new) = ("shutdown_grace: 30s\n", "shutdown_grace: 30000ms\n");
        assert!(changes(old, new).is_empty());
        let (old, new) = ("limits: {}\n", "limits: { max_inflight: 16384 }\n");
        assert!(changes(old, new).is_empty());
    }

    #[test]
    fn a_key_added_or_removed_counts_even_with_its_default_value() {
        assert_eq!(changes("", "workers: auto\n"), ["workers"]);
        assert_eq!(changes("shutdown_grace: 30s\n", ""), ["shutdown_grace"]);
        assert_eq!(
            changes("data_dir: /tmp/a\n", "data_dir: /tmp/a\ncall_log: {}\n"),
            ["call_log"]
        );
    }

    #[test]
    fn each_changed_key_is_named_in_file_order() {
        assert_eq!(changes("workers: 2\n", "workers: 3\n"), ["workers"]);
        assert_eq!(changes("workers: 2\n", "workers: auto\n"), ["workers"]);
        assert_eq!(
            changes(
                "shutdown_grace: 5s\nworkers: 1\n",
                "workers: 2\nshutdown_grace: 6s\n"
            ),
            ["workers", "shutdown_grace"]
        );
        let moved = "listeners: [{ name: public, bind: \"127.0.0.1:1\" }]\n";
        let load = |text: &str| load_str(text, "t.yaml").unwrap();
        assert_eq!(load(BASE).restart_only_changes(&load(moved)), ["listeners"]);
    }

    #[test]
    fn the_call_log_directory_is_a_data_dir_change_only() {
        assert_eq!(changes("", "data_dir: /tmp/a\n"), ["data_dir"]);
        assert_eq!(changes("data_dir: /tmp/a\n", "data_dir: /tmp/b\n"), ["data_dir"]);
        assert_eq!(
            changes("", "data_dir: /tmp/a\ncall_log: { max_rows: 5 }\n"),
            ["data_dir", "call_log"]
        );
        assert_eq!(
            changes(
                "data_dir: /tmp/a\n",
                "data_dir: /tmp/a\ncall_log: { enabled: false }\n"
            ),
            ["call_log"]
        );
    }
}
