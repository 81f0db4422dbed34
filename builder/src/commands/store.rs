//! `rbuild du`, `rbuild prune`, `rbuild verify`: the state directory.

use std::path::PathBuf;

use anyhow::{Context, bail};
use cache::gc::{PruneOptions, Store, disk_usage};

use crate::cli::{DuArgs, PruneArgs};

/// The state root: `--root`/`RBUILD_ROOT`, else `/var/lib/rbuild` as root,
/// else `$XDG_DATA_HOME/rbuild` (`~/.local/share/rbuild`).
pub fn state_root(flag: Option<PathBuf>) -> PathBuf {
    if let Some(root) = flag {
        return root;
    }
    // Inside the namespace an ordinary user's rbuild runs in, the user's.
    if let Some(root) = std::env::var_os(crate::rootless::STATE_ROOT_ENV) {
        return PathBuf::from(root);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/rbuild");
    }
    match std::env::var_os("XDG_DATA_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("rbuild"),
        _ => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/share/rbuild")
        }
    }
}

fn open(root: Option<PathBuf>) -> anyhow::Result<Store> {
    open_state(&state_root(root))
}

/// Opens the state directory `root`, saying so when its cache index was
/// unreadable and an empty one was started in its place.
pub(crate) fn open_state(root: &std::path::Path) -> anyhow::Result<Store> {
    let store = Store::open(root)
        .with_context(|| format!("opening the state directory {}", root.display()))?;
    if let Some(aside) = store.index.recovered() {
        eprintln!(
            "WARNING: the cache index of {} was unreadable: it was moved to {} and an empty one started (cached steps run again)",
            root.display(),
            aside.display()
        );
    }
    Ok(store)
}

/// Human size with decimal units, as docker prints them.
pub fn human(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.3}{}", units[i]).replace(".000", "")
    }
}

pub fn du(root: Option<PathBuf>, args: DuArgs) -> anyhow::Result<()> {
    let store = open(root)?;
    let usage = disk_usage(&store)?;
    let now = cache::index::now();
    // Records taken from an imported cache (`--cache-from`) are listed
    // apart from the ones made here.
    let imported = |r: &cache::gc::UsageRecord| {
        serde_json::from_str::<serde_json::Value>(&r.record.result)
            .is_ok_and(|v| v["imported"] == true)
    };
    if args.verbose || !usage.records.is_empty() {
        println!(
            "{:<66}{:>12}{:>12}  {:<9}LAST ACCESSED",
            "ID", "RECLAIMABLE", "SIZE", "SOURCE"
        );
        for r in usage.records.iter().rev() {
            let ago = now - r.record.last_used;
            println!(
                "{:<66}{:>12}{:>12}  {:<9}{} ago",
                r.record.key.as_str(),
                human(r.reclaimable),
                human(r.record.size),
                if imported(r) { "imported" } else { "local" },
                ago_text(ago)
            );
        }
    }
    let (count, size) = usage
        .records
        .iter()
        .filter(|r| imported(r))
        .fold((0, 0), |(n, s), r| (n + 1, s + r.record.size));
    if count > 0 {
        println!("Imported:\t{} in {count} records", human(size));
    }
    println!("Reclaimable:\t{}", human(usage.reclaimable));
    println!("Total:\t\t{}", human(usage.total));
    Ok(())
}

fn ago_text(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s} seconds"),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 86400 => format!("{} hours", s / 3600),
        s => format!("{} days", s / 86400),
    }
}

pub fn prune(root: Option<PathBuf>, args: PruneArgs) -> anyhow::Result<()> {
    let store = open(root)?;
    let options = PruneOptions {
        // Without a filter or size, prune drops every record (docker builder prune).
        all: args.all || (args.filter.is_empty() && args.keep_storage.is_none()),
        older_than: args.filter.iter().min().copied(),
        keep_storage: args.keep_storage,
        grace: None,
    };
    let report = cache::gc::prune(&store, &options)?;
    println!(
        "Deleted {} records, {} blobs and {} snapshots",
        report.records, report.blobs, report.snapshots
    );
    println!("Total:\t{}", human(report.bytes));
    Ok(())
}

pub fn verify(root: Option<PathBuf>) -> anyhow::Result<()> {
    let store = open(root)?;
    let blobs = store.blobs.list()?;
    let bad = store.blobs.verify_all()?;
    for (digest, err) in &bad {
        eprintln!("corrupt: {digest}: {err}");
    }
    if !bad.is_empty() {
        bail!("{} of {} blobs are corrupt", bad.len(), blobs.len());
    }
    println!("{} blobs verified", blobs.len());
    Ok(())
}
