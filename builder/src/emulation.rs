//! Running RUN steps for another architecture: through a QEMU user-mode
//! emulator registered in the kernel's `binfmt_misc`, as BuildKit relies
//! on (`docker run --privileged tonistiigi/binfmt --install all` registers
//! the same handlers). A handler must have the fix-binary flag (`F`): the
//! kernel then opens the emulator when it is registered, so it works
//! inside a step's root, where no emulator file is. When none is
//! registered and rbuild runs as root, Debian's `qemu-user-static` handler
//! is registered from its `update-binfmts` description.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, bail};
use frontend::stage::Platform;

/// Where the kernel's binfmt_misc lives.
const BINFMT: &str = "/proc/sys/fs/binfmt_misc";
/// Debian's descriptions of the handlers `qemu-user-static` provides.
const DEBIAN_BINFMTS: &str = "/usr/share/binfmts";

/// Architectures found runnable in this process (each is checked once).
static READY: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());

/// Makes sure a RUN for `platform` can run here: natively, or through a
/// registered emulator (registering Debian's when missing and allowed).
/// The error says what to install or run.
pub fn ensure(platform: &Platform) -> anyhow::Result<()> {
    if platform.os != "linux" {
        bail!("RUN for {platform} can't run here: only linux platforms can");
    }
    let host = Platform::host();
    if platform.architecture == host.architecture {
        return Ok(());
    }
    let Some(name) = qemu_name(platform) else {
        bail!("RUN for {platform} can't run here: no emulator is known for that architecture");
    };
    let mut ready = READY.lock().unwrap_or_else(|e| e.into_inner());
    if ready.contains(name) {
        return Ok(());
    }
    ensure_handler(platform, name, Path::new(BINFMT))?;
    ready.insert(name);
    Ok(())
}

/// QEMU's name for the architecture of `platform` (`qemu-NAME`).
fn qemu_name(platform: &Platform) -> Option<&'static str> {
    Some(match platform.architecture.as_str() {
        "arm64" => "aarch64",
        "arm" => "arm",
        "386" => "i386",
        "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "mips64le" => "mips64el",
        "mips64" => "mips64",
        "loong64" => "loongarch64",
        _ => return None,
    })
}

/// How to get an emulator for `platform`, for errors.
fn hint(platform: &Platform) -> String {
    format!(
        "install Debian's qemu-user-static (rbuild registers it when run as root), or run \
         `docker run --privileged --rm tonistiigi/binfmt --install {}`",
        platform.architecture
    )
}

/// A registered handler `qemu-NAME` with the fix-binary flag, registered
/// now from Debian's description when there is none.
fn ensure_handler(platform: &Platform, name: &str, binfmt: &Path) -> anyhow::Result<()> {
    if !binfmt.join("register").exists() {
        mount_binfmt(binfmt).with_context(|| {
            format!(
                "RUN for {platform} needs an emulator, and binfmt_misc is not mounted at {}: {}",
                binfmt.display(),
                hint(platform)
            )
        })?;
    }
    let entry = binfmt.join(format!("qemu-{name}"));
    if let Ok(text) = std::fs::read_to_string(&entry) {
        let handler = Handler::read(&text);
        if !handler.enabled {
            bail!(
                "RUN for {platform}: the emulator qemu-{name} is registered in binfmt_misc but disabled (`echo 1 > {}`)",
                entry.display()
            );
        }
        if !handler.fix_binary {
            bail!(
                "RUN for {platform}: the emulator qemu-{name} is registered without the fix-binary flag (F), so it can't run inside a step's root; register it with F: {}",
                hint(platform)
            );
        }
        return Ok(());
    }
    let description = Path::new(DEBIAN_BINFMTS).join(format!("qemu-{name}"));
    let Ok(text) = std::fs::read_to_string(&description) else {
        bail!(
            "RUN for {platform} needs an emulator and none is registered: {}",
            hint(platform)
        );
    };
    let rule =
        registration(name, &text).with_context(|| format!("reading {}", description.display()))?;
    let registered = std::fs::write(binfmt.join("register"), rule.as_bytes());
    // Another build may have registered it meanwhile (EEXIST).
    if registered.is_err() && entry.exists() {
        return Ok(());
    }
    registered.with_context(|| {
        format!(
            "RUN for {platform}: registering the emulator qemu-{name} (needs root): {}",
            hint(platform)
        )
    })?;
    Ok(())
}

/// What a registered handler's file says.
struct Handler {
    enabled: bool,
    fix_binary: bool,
}

impl Handler {
    /// Reads `/proc/sys/fs/binfmt_misc/NAME` (`enabled`, `interpreter ...`,
    /// `flags: POCF`, ...).
    fn read(text: &str) -> Handler {
        Handler {
            enabled: text.lines().next() == Some("enabled"),
            fix_binary: text
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .is_some_and(|f| f.contains('F')),
        }
    }
}

/// The `register` line for handler `qemu-NAME` from Debian's
/// `update-binfmts` description: magic matching, always fix-binary, and
/// preserve-argv0 / credentials as described.
fn registration(name: &str, description: &str) -> anyhow::Result<String> {
    let field = |key: &str| {
        description.lines().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(str::trim)
        })
    };
    let interpreter = PathBuf::from(field("interpreter").context("no interpreter")?);
    if !interpreter.is_file() {
        bail!("the emulator {} is not installed", interpreter.display());
    }
    let magic = field("magic").context("no magic")?;
    let mask = field("mask").unwrap_or("");
    let offset = field("offset").unwrap_or("0");
    let mut flags = String::from("F");
    if field("preserve") == Some("yes") {
        flags.push('P');
    }
    if field("credentials") == Some("yes") {
        flags.push('C');
    }
    Ok(format!(
        ":qemu-{name}:M:{offset}:{magic}:{mask}:{}:{flags}",
        interpreter.display()
    ))
}

fn mount_binfmt(target: &Path) -> anyhow::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt as _;
    let fs = CString::new("binfmt_misc").expect("no NUL");
    let at = CString::new(target.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated strings for the call; no data.
    let rc = unsafe { libc::mount(fs.as_ptr(), at.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debians_description_becomes_a_registration() {
        let dir = std::env::temp_dir().join(format!("rbuild-binfmt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let interp = dir.join("aarch64-binfmt-P");
        std::fs::write(&interp, "").unwrap();
        let text = format!(
            "package qemu-user-static\ninterpreter {}\nmagic \\x7f\\x45\\x4c\\x46\\x02\noffset 0\nmask \\xff\\xff\\xff\\xff\\xff\ncredentials no\nfix_binary yes\npreserve yes\n",
            interp.display()
        );
        assert_eq!(
            registration("aarch64", &text).unwrap(),
            format!(
                ":qemu-aarch64:M:0:\\x7f\\x45\\x4c\\x46\\x02:\\xff\\xff\\xff\\xff\\xff:{}:FP",
                interp.display()
            )
        );
        std::fs::remove_file(&interp).unwrap();
        assert!(registration("aarch64", &text).is_err(), "no emulator file");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn handler_files_as_the_kernel_writes_them() {
        let h = Handler::read(
            "enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: POCF\noffset 0\nmagic 7f454c46\n",
        );
        assert!(h.enabled && h.fix_binary);
        let h = Handler::read("enabled\ninterpreter /usr/bin/qemu-aarch64\nflags: OC\n");
        assert!(h.enabled && !h.fix_binary);
        assert!(!Handler::read("disabled\nflags: F\n").enabled);
    }

    #[test]
    fn architectures_by_qemus_names() {
        let p = |s: &str| Platform::parse(s).unwrap();
        assert_eq!(qemu_name(&p("linux/arm64")), Some("aarch64"));
        assert_eq!(qemu_name(&p("linux/arm/v7")), Some("arm"));
        assert_eq!(qemu_name(&p("linux/riscv64")), Some("riscv64"));
        assert_eq!(qemu_name(&p("linux/sparc")), None);
    }
}
