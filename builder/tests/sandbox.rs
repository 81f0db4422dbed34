//! The RUN sandbox, for real, with both runtimes (embedded: clone(2) from
//! this process; runc): a busybox root filesystem, namespaces, mounts,
//! users, network, exit codes, capabilities, seccomp, and that nothing of
//! the step outlives it or leaks into the root.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use builder::sandbox::embedded::Embedded;
use builder::sandbox::runc::Runc;
use builder::sandbox::{Access, Cancel, Mount, Network, RunSpec, Runtime, SandboxError, Stream};

struct Tmp(PathBuf);

impl Drop for Tmp {
    fn drop(&mut self) {
        for dir in [
            self.0.clone(),
            self.0.with_extension("shared"),
            self.0.with_extension("runc"),
        ] {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

fn busybox_root(name: &str) -> Tmp {
    let root =
        std::env::temp_dir().join(format!("rbuild-sandbox-test-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    for d in ["bin", "etc", "tmp"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("busybox-static is installed (.ci/run)");
    let out = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8(out.stdout).unwrap().lines() {
        let _ = symlink("busybox", root.join("bin").join(applet));
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
    )
    .unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    Tmp(root)
}

fn spec(root: &Path, script: &str) -> RunSpec {
    RunSpec {
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        resolv_conf: "nameserver 192.0.2.53\n".into(),
        ..RunSpec::new(
            root.to_path_buf(),
            vec!["/bin/sh".into(), "-c".into(), script.into()],
        )
    }
}

/// Both runtimes, by name; runc keeps its state beside the test's root.
fn runtimes(t: &Tmp) -> [(&'static str, Box<dyn Runtime>); 2] {
    let embedded = Embedded::default();
    let runc = Runc::find(&t.0.with_extension("runc")).expect("runc is installed (.ci/run)");
    [("embedded", Box::new(embedded)), ("runc", Box::new(runc))]
}

fn run(runtime: &dyn Runtime, spec: &RunSpec) -> (i32, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = runtime
        .run(spec, &Cancel::default(), &mut |s, b| match s {
            Stream::Stdout => out.extend_from_slice(b),
            Stream::Stderr => err.extend_from_slice(b),
        })
        .unwrap();
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn runs_in_its_own_namespaces() {
    if !is_root() {
        eprintln!("skipped: the sandbox needs root");
        return;
    }
    let t = busybox_root("ns");
    for (name, rt) in runtimes(&t) {
        eprintln!("runtime: {name}");
        let (code, out, err) = run(
            rt.as_ref(),
            &spec(
                &t.0,
                "echo pid=$$; hostname; cat /etc/hosts; cat /etc/resolv.conf; ls /proc | grep -c '^[0-9]'; ls /dev; echo err >&2; test -e /host-marker || echo no-host",
            ),
        );
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("pid=1\n"), "{out}");
        assert!(out.contains("buildkitsandbox\n"), "{out}");
        assert!(
            out.contains("127.0.0.1\tlocalhost buildkitsandbox"),
            "{out}"
        );
        assert!(out.contains("nameserver 192.0.2.53"), "{out}");
        for node in [
            "null", "zero", "random", "urandom", "tty", "pts", "shm", "fd",
        ] {
            assert!(out.lines().any(|l| l == node), "/dev/{node} missing: {out}");
        }
        assert!(out.contains("no-host"), "{out}");
        assert_eq!(err, "err\n");
        // The stubs of the run's own mounts never stay in the root; the
        // runtime's mount points do, empty (runc makes them and BuildKit
        // keeps them).
        assert!(!t.0.join("etc/hosts").exists() && !t.0.join("etc/resolv.conf").exists());
        for dir in ["proc", "dev", "sys"] {
            let entries = std::fs::read_dir(t.0.join(dir)).map(|d| d.count());
            assert_eq!(entries.ok(), Some(0), "/{dir} with {name}");
        }
    }
}

#[test]
fn exit_codes_env_cwd_and_user() {
    if !is_root() {
        eprintln!("skipped: the sandbox needs root");
        return;
    }
    let t = busybox_root("user");
    for (name, rt) in runtimes(&t) {
        eprintln!("runtime: {name}");
        let (code, _, _) = run(rt.as_ref(), &spec(&t.0, "exit 3"));
        assert_eq!(code, 3);
        // The command is PID 1 of its namespace, which a signal from inside
        // cannot kill (as in Docker); a killed child shows as 128+signal.
        let (code, _, _) = run(rt.as_ref(), &spec(&t.0, "sh -c 'kill -9 $$'; exit $?"));
        assert_eq!(code, 128 + 9);
        let mut s = spec(
            &t.0,
            "echo $GREETING; pwd; id -u; id -g; id -G; touch /tmp/made-by-user",
        );
        s.env.push("GREETING=hello there".into());
        s.cwd = "/work/dir".into();
        s.uid = 1000;
        s.gid = 1000;
        s.additional_gids = vec![2000];
        let (code, out, err) = run(rt.as_ref(), &s);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, "hello there\n/work/dir\n1000\n1000\n1000 2000\n");
        assert!(t.0.join("work/dir").is_dir(), "WORKDIR is created");
        let meta = fs::metadata(t.0.join("tmp/made-by-user")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 1000);
        // A missing command is the command's failure, told as BuildKit does.
        let mut s = spec(&t.0, "");
        s.args = vec!["no-such-tool".into()];
        let err = rt.run(&s, &Cancel::default(), &mut |_, _| {}).unwrap_err();
        assert!(
            matches!(&err, SandboxError::Setup(m) if m.contains("executable file not found in $PATH")),
            "{err}"
        );
    }
}

#[test]
fn capabilities_and_privileges_are_dropped() {
    if !is_root() {
        eprintln!("skipped: the sandbox needs root");
        return;
    }
    let t = busybox_root("caps");
    for (name, rt) in runtimes(&t) {
        eprintln!("runtime: {name}");
        let (code, out, err) = run(
            rt.as_ref(),
            &spec(
                &t.0,
                "grep -E '^(CapInh|CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status; mount -t tmpfs x /mnt 2>&1 || echo mount-denied; \
                 v=$(cat /proc/sys/vm/swappiness); echo $v 2>/dev/null > /proc/sys/vm/swappiness || echo sysctl-denied; \
                 grep -E ' /proc/(sys|fs|irq) | /dev/mqueue ' /proc/mounts | cut -d' ' -f2,4; \
                 cat /proc/kcore | head -c1 | wc -c",
            ),
        );
        assert_eq!(code, 0, "{err}");
        // Docker's default set: 0x00000000a80425fb.
        assert!(out.contains("CapEff:\t00000000a80425fb"), "{out}");
        assert!(out.contains("CapBnd:\t00000000a80425fb"), "{out}");
        // As BuildKit: nothing inheritable or ambient, and no
        // `no_new_privs` (setuid programs work: see the test below).
        assert!(out.contains("CapInh:\t0000000000000000"), "{out}");
        assert!(out.contains("CapAmb:\t0000000000000000"), "{out}");
        assert!(out.contains("NoNewPrivs:\t0"), "{out}");
        assert!(out.contains("mount-denied"), "{out}");
        // Root in the step is root on the host: the kernel's settings are
        // read-only to it.
        assert!(out.contains("sysctl-denied"), "{out}");
        // Read-only, keeping the flags /proc has (runc's remount).
        for path in ["/proc/sys", "/proc/fs", "/proc/irq"] {
            assert!(
                out.contains(&format!("{path} ro,nosuid,nodev,noexec")),
                "{path} writable or flags lost: {out}"
            );
        }
        // The step's own message queues, as in runc's default spec.
        assert!(out.contains("/dev/mqueue rw,nosuid,nodev,noexec"), "{out}");
        assert!(
            out.trim_end().ends_with('0'),
            "/proc/kcore is masked: {out}"
        );
        let mut s = spec(&t.0, "grep CapEff /proc/self/status");
        s.insecure = true;
        let (_, out, _) = run(rt.as_ref(), &s);
        assert!(
            !out.contains("a80425fb"),
            "insecure keeps all capabilities: {out}"
        );
    }
}

/// As in BuildKit, a setuid-root program run by another user gains root's
/// effective id (`USER app` then `RUN sudo ...`), still inside the step's
/// capability bounds and seccomp profile.
#[test]
fn setuid_programs_gain_their_owners_id() {
    if !is_root() {
        eprintln!("skipped: the sandbox needs root");
        return;
    }
    let t = busybox_root("setuid");
    let src = t.0.join("euid.c");
    fs::write(
        &src,
        "#include <stdio.h>\n#include <unistd.h>\nint main(void) { printf(\"euid=%d\\n\", (int)geteuid()); return 0; }\n",
    )
    .unwrap();
    let bin = t.0.join("bin/euid");
    let cc = std::process::Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("a C compiler (build-essential, .ci/run)");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o4755)).unwrap();
    for (name, rt) in runtimes(&t) {
        eprintln!("runtime: {name}");
        let mut s = spec(&t.0, "/bin/euid; id -u");
        s.uid = 1000;
        s.gid = 1000;
        let (code, out, err) = run(rt.as_ref(), &s);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, "euid=0\n1000\n", "{name}");
    }
}

/// `--ulimit`s reach the command in both runtimes; without any, the step
/// keeps rbuild's own limits (BuildKit resets runc's default list).
#[test]
fn ulimits_apply_in_both_runtimes() {
    if !is_root() {
        eprintln!("skipped: the sandbox needs root");
        return;
    }
    let t = busybox_root("ulimit");
    let own = std::process::Command::new("sh")
        .args(["-c", "ulimit -n"])
        .output()
        .unwrap();
    for (name, rt) in runtimes(&t) {
        eprintln!("runtime: {name}");
        let mut s = spec(&t.0, "ulimit -n; ulimit -Hn; ulimit -c");
        s.rlimits = vec![
            "nofile=1000:1001".parse().unwrap(),
            "core=0".parse().unwrap(),
        ];
        let (code, out, err) = run(rt.as_ref(), &s);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, "1000\n1001\n0\n", "{name}");
        let (_, out, _) = run(rt.as_ref(), &spec(&t.0, "ulimit -n"));
        assert_eq!(out.as_bytes(), own.stdout, "{name}: rbuild's own limit");
    }
}

#[test]
fn network_none_has_only_loopback() {
    if !is_root() {
        eprintln!("skipped: the sandbox needs root");
        return;
    }
    let t = busybox_root("net");
    for (name, rt) in runtimes(&t) {
        eprintln!("runtime: {name}");
        let mut s = spec(&t.0, "ls /sys/class/net; ip link show lo | grep -c UP");
        s.network = Network::None;
        let (code, out, err) = run(rt.as_ref(), &s);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, "lo\n1\n");
    }
}

#[test]
fn mounts_and_no_process_outlives_the_step() {
    if !is_root() {
        eprintln!("skipped: the sandbox needs root");
        return;
    }
    let t = busybox_root("mounts");
    for (name, rt) in runtimes(&t) {
        eprintln!("runtime: {name}");
        let shared = t.0.with_extension("shared");
        fs::create_dir_all(&shared).unwrap();
        fs::write(shared.join("input"), "from the host\n").unwrap();
        let marker = format!("rbuild-orphan-{}", std::process::id());
        let mut s = spec(
            &t.0,
            &format!(
                "cat /in/input; echo cached > /cache/out; echo x > /in/ro 2>/dev/null || echo read-only; grep ' /scratch ' /proc/mounts | cut -d' ' -f3,4; /tool 2>/dev/null || echo noexec; (exec -a {marker} sleep 300 &) ; echo started"
            ),
        );
        s.mounts = vec![
            Mount::Bind {
                source: shared.clone(),
                target: "/in".into(),
                access: Access::ReadOnly,
            },
            Mount::Bind {
                source: shared.join("cache"),
                target: "/cache".into(),
                access: Access::ReadWrite,
            },
            Mount::Tmpfs {
                target: "/scratch".into(),
                size: 1 << 20,
            },
            Mount::Bind {
                source: shared.join("tool"),
                target: "/tool".into(),
                access: Access::Sealed,
            },
        ];
        fs::create_dir_all(shared.join("cache")).unwrap();
        fs::write(shared.join("tool"), "#!/bin/sh\necho ran\n").unwrap();
        fs::set_permissions(shared.join("tool"), fs::Permissions::from_mode(0o755)).unwrap();
        let (code, out, err) = run(rt.as_ref(), &s);
        assert_eq!(code, 0, "{err}");
        // A tmpfs as BuildKit mounts one: nosuid and the size only.
        assert_eq!(
            out,
            "from the host\nread-only\ntmpfs rw,nosuid,relatime,size=1024k\nnoexec\nstarted\n"
        );
        assert_eq!(
            fs::read_to_string(shared.join("cache/out")).unwrap(),
            "cached\n"
        );
        // The background sleep died with the step's PID namespace.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let ps = std::process::Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&ps.stdout).contains(&marker),
            "a step process survived"
        );
        // Stubs for the mount points are gone again.
        for p in ["in", "cache", "scratch", "tool"] {
            assert!(!t.0.join(p).exists(), "/{p} left in the root");
        }
        let _ = fs::remove_dir_all(&shared);
    }
}

/// As BuildKit's dedupMounts: a step's mount at a place the runtime mounts
/// something (`--shm-size`'s /dev/shm) replaces it, and of two step mounts
/// at one place the last one is mounted, once.
#[test]
fn step_mounts_replace_mounts_at_the_same_place() {
    if !is_root() {
        eprintln!("skipped: the sandbox needs root");
        return;
    }
    let t = busybox_root("replace");
    for (name, rt) in runtimes(&t) {
        eprintln!("runtime: {name}");
        let (a, b) = (t.0.with_extension("a"), t.0.with_extension("b"));
        for (dir, which) in [(&a, "a"), (&b, "b")] {
            fs::create_dir_all(dir).unwrap();
            fs::write(dir.join("which"), which).unwrap();
        }
        let mut s = spec(
            &t.0,
            "grep ' /dev/shm ' /proc/mounts | cut -d' ' -f3,4; cat /data/which; echo; \
             grep -c ' /data ' /proc/mounts; echo x > /data/w && echo writable; ls /dev/null",
        );
        s.mounts = vec![
            Mount::Tmpfs {
                target: "/dev/shm".into(),
                size: 1 << 20,
            },
            Mount::Bind {
                source: a.clone(),
                target: "/data".into(),
                access: Access::ReadOnly,
            },
            Mount::Bind {
                source: b.clone(),
                target: "/data/".into(),
                access: Access::ReadWrite,
            },
        ];
        let (code, out, err) = run(rt.as_ref(), &s);
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            out,
            "tmpfs rw,nosuid,relatime,size=1024k\nb\n1\nwritable\n/dev/null\n"
        );
        let _ = fs::remove_dir_all(&a);
        let _ = fs::remove_dir_all(&b);
    }
}

#[test]
fn mount_targets_through_symlinks_stay_in_the_root() {
    if !is_root() {
        eprintln!("skipped: the sandbox needs root");
        return;
    }
    let t = busybox_root("symlinks");
    // An absolute link to a host directory and one climbing out: both
    // must be followed as if the root were `/`.
    let outside = t.0.with_extension("shared");
    for (name, rt) in runtimes(&t) {
        eprintln!("runtime: {name}");
        fs::create_dir_all(&outside).unwrap();
        symlink(&outside, t.0.join("abs")).unwrap();
        symlink("../../../../../../outside", t.0.join("up")).unwrap();
        let mut s = spec(
            &t.0,
            "df /abs/scratch | tail -1 | grep -c tmpfs; df /up/scratch | tail -1 | grep -c tmpfs",
        );
        s.mounts = ["/abs/scratch", "/up/scratch"]
            .map(|target| Mount::Tmpfs {
                target: target.into(),
                size: 1 << 20,
            })
            .to_vec();
        let (code, out, err) = run(rt.as_ref(), &s);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, "1\n1\n");
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "a mount point was made outside the root"
        );
        // The directories made for the mounts inside the root are gone.
        let inside = t.0.join(outside.strip_prefix("/").unwrap());
        assert!(!inside.exists() && !t.0.join("outside").exists());
        for link in ["abs", "up"] {
            fs::remove_file(t.0.join(link)).unwrap();
        }
    }
}

/// A step that closes its output and runs on is still stopped when the
/// build cancels (a sibling failed), not waited for.
#[test]
fn a_cancelled_step_stops_after_closing_its_output() {
    if !is_root() {
        eprintln!("skipped: the sandbox needs root");
        return;
    }
    let t = busybox_root("cancel");
    for (name, rt) in runtimes(&t) {
        eprintln!("runtime: {name}");
        let cancel = Cancel::default();
        let later = cancel.clone();
        let setter = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            later.cancel();
        });
        let started = std::time::Instant::now();
        let code = rt
            .run(
                &spec(&t.0, "echo started; exec >/dev/null 2>&1; sleep 60"),
                &cancel,
                &mut |_, _| {},
            )
            .unwrap();
        setter.join().unwrap();
        assert_eq!(code, 128 + 9, "killed");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "waited {:?} for a cancelled step",
            started.elapsed()
        );
    }
}

#[test]
fn seccomp_profile_refuses_what_docker_refuses() {
    if !is_root() {
        eprintln!("skipped: the sandbox needs root");
        return;
    }
    let t = busybox_root("seccomp");
    for (name, rt) in runtimes(&t) {
        eprintln!("runtime: {name}");
        // A user namespace needs no capability, only the profile stops it;
        // personality(PER_LINUX32) is one of the values the profile allows.
        let script = "grep '^Seccomp:' /proc/self/status; \
        unshare -U true 2>&1 && echo userns-created; \
        linux32 true && echo personality-allowed";
        let (code, out, err) = run(rt.as_ref(), &spec(&t.0, script));
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("Seccomp:\t2"), "a filter is installed: {out}");
        assert!(out.contains("Operation not permitted"), "{out}");
        assert!(!out.contains("userns-created"), "{out}");
        assert!(out.contains("personality-allowed"), "{out}");

        let mut s = spec(&t.0, script);
        s.insecure = true;
        let (code, out, err) = run(rt.as_ref(), &s);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("Seccomp:\t0"), "insecure has no filter: {out}");
        assert!(out.contains("userns-created"), "{out}");
    }
}
