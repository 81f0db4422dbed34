//! `-o type=docker` read by a real dockerd: `docker load` accepts the
//! archive, keeps rbuild's image id, and `docker run` runs the image.
//! dockerd runs privately for the test (own data root, socket, no
//! iptables, no bridge). Needs root and docker.io (.ci/run installs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

struct Dockerd {
    dir: PathBuf,
    child: Child,
}

impl Dockerd {
    fn start(dir: &Path) -> Dockerd {
        std::fs::create_dir_all(dir).unwrap();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .args(["--iptables=false", "--bridge=none", "--data-root"])
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd starts");
        let d = Dockerd {
            dir: dir.to_path_buf(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.docker(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not come up: {}",
                std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.dir.join("docker.sock").display()))
            .args(args)
            .output()
            .expect("the docker client runs")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // dockerd's overlay and shm mounts under its roots, deepest first.
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(self.dir.to_str().unwrap()))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn docker_loads_and_runs_a_docker_archive() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: building and dockerd need root");
        return;
    }
    let installed = Command::new("sh")
        .args(["-c", "command -v dockerd"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!("skipped: dockerd is not installed (.ci/run installs docker.io)");
        return;
    }
    let t = std::env::temp_dir().join(format!("rbuild-docker-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&t);
    let ctx = t.join("context");
    std::fs::create_dir_all(ctx.join("data")).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    std::fs::write(ctx.join("data/file.txt"), "payload\n").unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/build/busybox/Dockerfile"),
        ctx.join("Dockerfile"),
    )
    .unwrap();
    let archive = t.join("image.tar");
    let iid = t.join("iid");
    let build = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .arg("--root")
        .arg(t.join("state"))
        .args(["build", "-q", "-t", "rbuild-demo:1", "--iidfile"])
        .arg(&iid)
        .arg("-o")
        .arg(format!("type=docker,dest={}", archive.display()))
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", text(&build));
    let id = std::fs::read_to_string(&iid).unwrap();

    let dockerd = Dockerd::start(&t.join("docker"));
    let load = dockerd.docker(&["load", "-i", archive.to_str().unwrap()]);
    assert!(load.status.success(), "{}", text(&load));
    assert!(
        text(&load).contains("Loaded image: rbuild-demo:1"),
        "{}",
        text(&load)
    );
    // Docker's image id is the config digest: the same as rbuild's.
    let inspect = dockerd.docker(&[
        "image",
        "inspect",
        "--format",
        "{{.Id}} {{json .Config.Cmd}} {{.Config.WorkingDir}}",
        "rbuild-demo:1",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        format!("{id} [\"cat\",\"/app/greeting.txt\"] /app"),
        "{}",
        text(&inspect)
    );
    let history = dockerd.docker(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.CreatedBy}}",
        "rbuild-demo:1",
    ]);
    assert!(
        text(&history).contains("COPY --chown=1000:1000 data/ /app/data/ # buildkit"),
        "{}",
        text(&history)
    );
    let run = dockerd.docker(&["run", "--rm", "--network", "none", "rbuild-demo:1"]);
    assert!(run.status.success(), "{}", text(&run));
    assert_eq!(String::from_utf8_lossy(&run.stdout), "hello from /app\n");
    let owner = dockerd.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "rbuild-demo:1",
        "stat",
        "-c",
        "%u:%g %n",
        "/app/data/file.txt",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&owner.stdout),
        "1000:1000 /app/data/file.txt\n",
        "{}",
        text(&owner)
    );
    drop(dockerd);
    let _ = std::fs::remove_dir_all(&t);
}
