//! BuildKit's behaviours, case by case (../shared/notes/buildkit-behaviours.md
//! lists them with the upstream test that checks each; the case names here
//! are those tests'). Every case is a small Dockerfile built for real on a
//! busybox base image made once; the checks read the exported files, the
//! image config or the error. All failing cases are reported together.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Output;

use common::{is_root, rbuild, tmp};
use serde_json::{Value, json};

/// What a case checks after a successful build.
enum Check {
    /// An exported file's exact content.
    File(&'static str, &'static str),
    /// An exported file contains this text.
    Contains(&'static str, &'static str),
    /// Not in the export.
    Missing(&'static str),
    /// Permission bits (07777) of an exported path.
    Mode(&'static str, u32),
    /// Owner and group of an exported path.
    Owner(&'static str, u32, u32),
    /// Two exported paths are hard links of one file.
    Linked(&'static str, &'static str),
    /// A JSON pointer into `rbuild inspect`'s `Config` (the image config).
    Config(&'static str, Value),
    /// The build's plain progress contains this text.
    Log(&'static str),
    /// ... or does not.
    NoLog(&'static str),
    /// The length of an array in the image config.
    Count(&'static str, usize),
    /// The image id equals the first build's (in a rebuild's checks).
    SameImage,
    /// An exported file is as the first build left it (in a rebuild's
    /// checks: the step that wrote it stayed cached).
    Unchanged(&'static str),
}

struct Case {
    /// The upstream test that checks the behaviour.
    name: &'static str,
    dockerfile: String,
    /// Context files (path, content); directories are made as needed.
    files: Vec<(&'static str, &'static str)>,
    /// Context symlinks (path, target).
    links: Vec<(&'static str, &'static str)>,
    /// Extra build flags (`{ctx}` stands for the context directory).
    flags: Vec<&'static str>,
    /// The Dockerfile's name in the context (`-f` when not `Dockerfile`).
    dockerfile_name: &'static str,
    /// Checks after success, or the text the error must contain.
    expect: Result<Vec<Check>, &'static str>,
    /// More context preparation (archives and the like), in the context dir.
    setup: Option<fn(&Path)>,
    /// The image's tag (default `caseN`), for later cases to build on.
    tag: Option<&'static str>,
    /// A second build after the first succeeded: its extra flags and checks
    /// (its own log; files from its export).
    rebuild: Option<(Vec<&'static str>, Vec<Check>)>,
    /// A change to the context before the second build.
    before_rebuild: Option<fn(&Path)>,
}

fn case(name: &'static str, dockerfile: &str) -> Case {
    Case {
        name,
        dockerfile: dockerfile.to_string(),
        files: Vec::new(),
        links: Vec::new(),
        flags: Vec::new(),
        dockerfile_name: "Dockerfile",
        expect: Ok(Vec::new()),
        setup: None,
        tag: None,
        rebuild: None,
        before_rebuild: None,
    }
}

impl Case {
    fn files(mut self, files: &[(&'static str, &'static str)]) -> Case {
        self.files.extend_from_slice(files);
        self
    }
    fn links(mut self, links: &[(&'static str, &'static str)]) -> Case {
        self.links.extend_from_slice(links);
        self
    }
    fn flags(mut self, flags: &[&'static str]) -> Case {
        self.flags.extend_from_slice(flags);
        self
    }
    fn named(mut self, name: &'static str) -> Case {
        self.dockerfile_name = name;
        self
    }
    fn checks(mut self, checks: Vec<Check>) -> Case {
        self.expect = Ok(checks);
        self
    }
    fn fails(mut self, message: &'static str) -> Case {
        self.expect = Err(message);
        self
    }
    fn setup(mut self, setup: fn(&Path)) -> Case {
        self.setup = Some(setup);
        self
    }
    fn tag(mut self, tag: &'static str) -> Case {
        self.tag = Some(tag);
        self
    }
    fn before_rebuild(mut self, change: fn(&Path)) -> Case {
        self.before_rebuild = Some(change);
        self
    }
    fn rebuild(mut self, flags: &[&'static str], checks: Vec<Check>) -> Case {
        self.rebuild = Some((flags.to_vec(), checks));
        self
    }
}

/// Runs `sh -c script` in `dir` (test setup; panics on failure).
fn sh(dir: &Path, script: &str) {
    let o = std::process::Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{script}: {}", text(&o));
}

/// The base every case builds on (`FROM bb`): busybox, users and groups.
const BASE: &str = r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -m 1777 /tmp \
 && printf 'root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nuser:x:1000:1000::/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > /etc/passwd \
 && printf 'root:x:0:\ndaemon:x:1:\nuser:x:1000:\nextra:x:2000:user,daemon\nnogroup:x:65534:\n' > /etc/group
"#;

fn cases() -> Vec<Case> {
    use Check::*;
    vec![
        // 1. Parsing, directives, errors
        case(
            "testDockerfileInvalidInstruction",
            "FROM bb\nFNTRYPOINT [\"/bin/sh\", \"-c\", \"echo x\"]\n",
        )
        .fails("unknown instruction: FNTRYPOINT (did you mean ENTRYPOINT?)"),
        case(
            "testInvalidJSONCommands/run",
            "FROM bb\nRUN [\"echo\",\"hello\"]this is invalid\n",
        )
        .fails("did not complete successfully"),
        case(
            "testInvalidJSONCommands/entrypoint",
            "FROM bb\nENTRYPOINT []random string\n",
        )
        .checks(vec![Config(
            "/config/Entrypoint",
            json!(["/bin/sh", "-c", "[]random string"]),
        )]),
        case("testEmptyStages", "ARG foo=bar\n").fails("dockerfile contains no stages to build"),
        case("testDockerfileLowercase", "FROM bb\nRUN echo lower > /out\n")
            .named("dockerfile")
            .checks(vec![File("out", "lower\n")]),
        case(
            "testSymlinkedDockerfile",
            "FROM bb\nRUN echo linked > /out\n",
        )
        .named("Dockerfile.web")
        .links(&[("Dockerfile", "Dockerfile.web")])
        .checks(vec![File("out", "linked\n")]),
        case(
            "testDockerfileInvalidCommand",
            "FROM bb\nRUN invalidcmd\n",
        )
        .fails("process \"/bin/sh -c invalidcmd\" did not complete successfully: exit code: 127"),
        case(
            "testStepNames",
            "FROM bb AS base\nRUN echo base > /base\nFROM scratch\nCOPY --from=base --chmod=0644 /base /out\n",
        )
        .checks(vec![
            Log("[base 2/2] RUN echo base > /base"),
            Log("[stage-1 1/1] COPY --from=base --chmod=0644 /base /out"),
            Mode("out", 0o644),
        ]),
        // 2. FROM, stages, targets
        case(
            "testGlobalArg",
            "ARG tag=nosuchtag\nFROM bb:${tag}\nRUN echo ok > /out\n",
        )
        .flags(&["--build-arg", "tag=latest"])
        .checks(vec![File("out", "ok\n")]),
        case(
            "testGlobalArgErrors",
            "ARG FOO\nARG BAR=${FOO:?\"custom error\"}\nFROM bb\n",
        )
        .fails("FOO: custom error"),
        case(
            "testMultiStageCaseInsensitive",
            "FROM bb AS STAge0\nRUN echo foo > /foo\nFROM bb AS staGE1\nCOPY --from=staGE0 /foo /bar\nFROM bb\nRUN exit 1\n",
        )
        .flags(&["--target", "Stage1"])
        .checks(vec![File("bar", "foo\n")]),
        case(
            "testOutOfOrderStage",
            "FROM bb AS first\nCOPY --from=second /x /x\nFROM bb AS second\nRUN touch /x\nFROM first\n",
        )
        .fails("needs to be defined before current stage"),
        case("testTargetMistype", "FROM bb AS build\nRUN true\n")
            .flags(&["--target", "bulid"])
            .fails("target stage \"bulid\" could not be found (did you mean build?)"),
        case(
            "testMultiStageImplicitFrom",
            "FROM scratch\nCOPY --from=bb /bin/busybox /busybox\n",
        )
        .checks(vec![Mode("busybox", 0o755)]),
        case(
            "testHTTPDockerfile/from-index",
            "FROM bb\nRUN echo zero > /z\nFROM scratch\nCOPY --from=0 /z /z\n",
        )
        .checks(vec![File("z", "zero\n")]),
        // 3. ARG and build args
        case(
            "testMultiArgs",
            "FROM bb\nARG a1=\"foo bar\" a2=box\nARG a3=\"$a2-foo\"\nRUN echo \"$a1|$a2|$a3\" > /out\n",
        )
        .checks(vec![File("out", "foo bar|box|box-foo\n")]),
        case(
            "testBuiltinArgs",
            "FROM bb\nARG FOO\nRUN echo \"$http_proxy|$NO_PROXY|[$FOO]\" > /out\n",
        )
        .flags(&["--build-arg", "http_proxy=http://proxy:3128", "--build-arg", "NO_PROXY=local"])
        .checks(vec![File("out", "http://proxy:3128|local|[]\n")]),
        case(
            "testEmptyStringArgInEnv",
            "FROM bb\nARG BAR=\nARG FOO\nRUN env > /env\n",
        )
        .checks(vec![Contains("env", "\nBAR=\n")]),
        case(
            "testEmptyStringArgInEnv/unset",
            "FROM bb\nARG FOO\nRUN env | grep -c '^FOO' > /count || true\n",
        )
        .checks(vec![File("count", "0\n")]),
        case(
            "testDefaultEnvWithArgs",
            "FROM bb\nARG my_arg\nENV my_arg=\"${my_arg:-def_val}\"\nENV my_trimmed_arg=\"${my_arg%%e*}\"\nRUN echo \"$my_arg $my_trimmed_arg\" > /out\n",
        )
        .flags(&["--build-arg", "my_arg=other_val"])
        .checks(vec![File("out", "other_val oth\n")]),
        case(
            "testEnvEmptyFormatting",
            "FROM bb\nENV myenv foo%sbar\nRUN [ \"$myenv\" = 'foo%sbar' ]\n",
        )
        .checks(vec![Config(
            "/config/Env/1",
            json!("myenv=foo%sbar"),
        )]),
        // 4. Image config
        case("testDockerfileScratchConfig", "FROM scratch\nENV foo=bar\n").checks(vec![
            Config(
                "/config/Env",
                json!([
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "foo=bar"
                ]),
            ),
            Config("/os", json!("linux")),
            Config("/architecture", json!("amd64")),
            Config("/rootfs/diff_ids", json!([])),
            Config("/history/0/created_by", json!("ENV foo=bar")),
            Config("/history/0/empty_layer", json!(true)),
        ]),
        case("testLabels", "FROM bb\nLABEL from=file\n")
            .flags(&["--label", "from=cli2", "--label", "extra=1"])
            .checks(vec![Config(
                "/config/Labels",
                json!({"extra": "1", "from": "cli2"}),
            )]),
        case(
            "testExposeExpansion",
            "FROM bb\nARG PORTS=\"3000 4000/udp\"\nEXPOSE $PORTS\nEXPOSE 5000\n",
        )
        .checks(vec![Config(
            "/config/ExposedPorts",
            json!({"3000/tcp": {}, "4000/udp": {}, "5000/tcp": {}}),
        )]),
        case(
            "testExportedHistory",
            "FROM bb\nEXPOSE 5000 1234/udp 2375\nWORKDIR /w\nLABEL a=b\n",
        )
        .checks(vec![
            Config("/history/0/created_by", json!("COPY busybox /bin/busybox # buildkit")),
            Config("/history/3/created_by", json!("EXPOSE [1234/udp 2375/tcp 5000/tcp]")),
            Config("/history/3/empty_layer", json!(true)),
            Config("/history/4/created_by", json!("WORKDIR /w")),
            Config("/history/5/created_by", json!("LABEL a=b")),
        ]),
        case(
            "testUser",
            "FROM bb\nUSER daemon\nRUN id > /tmp/daemon\nUSER 1000:extra\nRUN id > /tmp/mixed\nUSER nobody\n",
        )
        .checks(vec![
            File("tmp/daemon", "uid=1(daemon) gid=1(daemon) groups=1(daemon),2000(extra)\n"),
            File("tmp/mixed", "uid=1000(user) gid=2000(extra) groups=2000(extra)\n"),
            Config("/config/User", json!("nobody")),
        ]),
        case(
            "testUserAdditionalGids",
            "FROM bb\nUSER 1234\nRUN id > /tmp/uid\nUSER 1234:1234\nRUN id > /tmp/uidgid\n",
        )
        .checks(vec![
            File("tmp/uid", "uid=1234 gid=0(root) groups=0(root)\n"),
            File("tmp/uidgid", "uid=1234 gid=1234 groups=1234\n"),
        ]),
        case("testWorkdirCreatesDir", "FROM bb\nWORKDIR /foo\n")
            .checks(vec![Mode("foo", 0o755)]),
        case("testWorkdirUser", "FROM bb\nUSER daemon\nWORKDIR /mydir\n")
            .checks(vec![Owner("mydir", 1, 1)]),
        case(
            "testWorkdirExists",
            "FROM bb\nRUN mkdir /mydir && chown daemon:daemon /mydir\nWORKDIR /mydir\n",
        )
        .checks(vec![Owner("mydir", 1, 1)]),
        case(
            "testCopyRelative",
            "FROM bb\nWORKDIR /test1\nWORKDIR test2\nRUN pwd > /p1\nWORKDIR ..\nRUN pwd > /p2\n",
        )
        .checks(vec![File("p1", "/test1/test2\n"), File("p2", "/test1\n")]),
        // 5. CMD, ENTRYPOINT, SHELL
        case(
            "testCmdShell/entrypoint",
            "FROM bb AS base\nCMD [\"test\"]\nFROM base\nSHELL [\"ls\"]\nENTRYPOINT my entrypoint\n",
        )
        .checks(vec![
            Config("/config/Entrypoint", json!(["ls", "my entrypoint"])),
            Config("/config/Cmd", Value::Null),
        ]),
        case(
            "testIgnoreEntrypoint",
            "FROM bb\nENTRYPOINT [\"/nosuchcmd\"]\nRUN [\"ls\"]\n",
        ),
        case(
            "testRunFakeHeredoc",
            "FROM bb\nSHELL [\"/bin/awk\"]\nRUN <<EOF\nBEGIN { print \"foo\" > \"/dest\" }\nEOF\n",
        )
        .checks(vec![File("dest", "foo\n")]),
        // 6. Heredocs
        case(
            "testRunBasicHeredoc",
            "FROM bb\nRUN <<EOF\necho i am > /dest\necho here >> /dest\nEOF\n",
        )
        .checks(vec![File("dest", "i am\nhere\n")]),
        case(
            "testRunShebangHeredoc",
            "FROM bb\nRUN <<EOF\n#!/bin/awk -f\nBEGIN { print \"hello\" > \"/dest\" }\nEOF\nRUN <<-EOF\n\t#!/bin/awk -f\n\tBEGIN { print \"tabs\" > \"/dest2\" }\nEOF\n",
        )
        .checks(vec![File("dest", "hello\n"), File("dest2", "tabs\n")]),
        case(
            "testRunComplexHeredoc",
            "FROM bb\nRUN cat <<EOF1 | tr '[:lower:]' '[:upper:]' > /dest1 && cat <<EOF2 > /dest2\nfoo\nEOF1\nbar\nEOF2\nRUN 3<<IN1 4<<IN2 cat /proc/self/fd/3 /proc/self/fd/4 > /dest3\nin1\nIN1\nin2\nIN2\n",
        )
        .checks(vec![
            File("dest1", "FOO\n"),
            File("dest2", "bar\n"),
            File("dest3", "in1\nin2\n"),
        ]),
        case(
            "testCopyHeredoc",
            "FROM bb\nCOPY <<EOF <<EOF2 /dir/\nfoo\nEOF\nbar\nEOF2\nCOPY --chmod=777 --chown=user:user <<EOF /x\nx\nEOF\n",
        )
        .checks(vec![
            File("dir/EOF", "foo\n"),
            File("dir/EOF2", "bar\n"),
            Mode("x", 0o777),
            Owner("x", 1000, 1000),
        ]),
        case(
            "testCopyHeredocSpecialSymbols",
            "FROM scratch\nCOPY <<EOF /unquoted\na\\\n\\\\\n\\$\nEOF\nCOPY <<\"EOF\" /quoted\na\\\n\\\\\n\\$\nEOF\n",
        )
        .checks(vec![
            File("unquoted", "a\n\\\n$\n"),
            File("quoted", "a\\\n\\\\\n\\$\n"),
        ]),
        case(
            "testHeredocIndent",
            "FROM bb\nCOPY <<EOF /kept\n\tfoo\nEOF\nCOPY <<-EOF /stripped\n\tfoo\nEOF\nRUN <<-EOF sh > /run\n\techo run\nEOF\n",
        )
        .checks(vec![
            File("kept", "\tfoo\n"),
            File("stripped", "foo\n"),
            File("run", "run\n"),
        ]),
        case(
            "testHeredocVarSubstitution",
            "FROM bb\nARG name=world\nCOPY <<EOF /a\nhello ${name} \"${name}\"\nEOF\nCOPY <<'EOF' /b\nhello ${name}\nEOF\nRUN <<EOF\nname=shell\necho \"hi $name\" > /c\nEOF\n",
        )
        .checks(vec![
            File("a", "hello world \"world\"\n"),
            File("b", "hello ${name}\n"),
            File("c", "hi shell\n"),
        ]),
        // A named context takes the place of the stage of its name: the
        // stage's own instructions don't run (they would fail here).
        case(
            "testNamedImageContext",
            "FROM scratch AS parent\nFROM parent AS base\nRUN echo base > /out\n\
             FROM base\nRUN [ -f /bin/busybox ] && [ ! -f /out ] && echo replaced > /r\n",
        )
        .flags(&["--build-context", "base=docker-image://bb"])
        .checks(vec![File("r", "replaced\n"), Missing("out")]),
        case(
            "testNamedLocalContext",
            "FROM bb AS base\nRUN false\nFROM scratch\nCOPY --from=base /f /copied\n",
        )
        .files(&[("dirctx/f", "from the directory\n")])
        .flags(&["--build-context", "base={ctx}/dirctx"])
        .checks(vec![File("copied", "from the directory\n")]),
        case("testNamedLocalContext", "FROM dirctx\n")
            .files(&[("dirctx/f", "alone\n")])
            .flags(&["--build-context", "dirctx={ctx}/dirctx"])
            .checks(vec![File("f", "alone\n")]),
        case(
            "testNamedImageContextScratch",
            "FROM busybox AS build\nCOPY <<EOF /out\nhello world!\nEOF\n\
             FROM scratch\nCOPY --from=scratch / /empty/\nCOPY --from=build /out /out\n",
        )
        .flags(&["--build-context", "busybox=docker-image://scratch"])
        .checks(vec![File("out", "hello world!\n"), Missing("bin")]),
        case(
            "testNamedImageContextScratch",
            "FROM bb\nRUN --mount=from=empty,target=/m ls -A /m > /listed\n\
             FROM scratch\nCOPY --from=empty / /e/\nCOPY --from=0 /listed /listed\n",
        )
        .flags(&["--build-context", "empty=docker-image://scratch"])
        .checks(vec![File("listed", ""), Missing("e/bin")]),
        case(
            "testCopyRelativeParents",
            "FROM bb AS base\nWORKDIR /test\n\
             RUN mkdir -p a/b/c/d/e a/b2/c/d/e a/b/c2/d/e a/b/c2/d/e2 && \
             touch a/b/c/d/foo a/b/c/d/e/bay a/b2/c/d/e/bar a/b/c2/d/e/baz a/b/c2/d/e2/baz\n\
             FROM scratch\n\
             COPY --from=base --parents /test/a/b/./c/d /middle/\n\
             COPY --from=base --parents /test/a/b/c/d/. /end/\n\
             COPY --from=base --parents ./test/a/b/c/d /start/\n\
             COPY --from=base --parents /test/a/./b/./c /double/\n\
             COPY --from=base --parents /test/a/./*/c /wildcard/\n\
             COPY --from=base --parents /test/a/b*/./c/**/e /doublewildcard/\n\
             COPY --from=base --parents /test/a/b/c*/./d/**/baz /test/a/b*/./c/**/bar /doubleinputs/\n\
             COPY --from=base --parents /test/nope*/./x /test/./nope* /empty/\n",
        )
        .checks(vec![
            File("middle/c/d/foo", ""),
            File("middle/c/d/e/bay", ""),
            Missing("middle/a"),
            Missing("middle/e"),
            File("end/test/a/b/c/d/foo", ""),
            File("start/test/a/b/c/d/e/bay", ""),
            File("double/b/c/d/foo", ""),
            File("wildcard/b/c/d/e/bay", ""),
            File("wildcard/b2/c/d/e/bar", ""),
            File("doublewildcard/c/d/e/bay", ""),
            File("doublewildcard/c/d/e/bar", ""),
            File("doubleinputs/d/e/baz", ""),
            File("doubleinputs/d/e2/baz", ""),
            File("doubleinputs/c/d/e/bar", ""),
            Missing("doubleinputs/d/e/bay"),
        ]),
        case(
            "testCopyParentsMissingDirectory",
            "FROM bb AS base\nRUN mkdir -p /test/a\nFROM scratch\n\
             COPY --from=base --parents /test/nope/./x /out/\n",
        )
        .fails("\"/test/nope/x\": not found"),
        case(
            "testOnBuildHeredoc",
            "FROM bb AS parent\nONBUILD RUN <<EOF\necho from-onbuild > /dest\nEOF\nFROM parent\n",
        )
        .checks(vec![File("dest", "from-onbuild\n")]),
        // 7. RUN --mount
        case(
            "testMountContext",
            "FROM bb\nRUN --mount=target=/context cat /context/foo > /out\n",
        )
        .files(&[("foo", "contents0")])
        .checks(vec![File("out", "contents0")]),
        case(
            "testMountTmpfs",
            "FROM bb\nRUN --mount=type=tmpfs,target=/t,size=128m mount | grep ' /t ' > /m && touch /t/gone\n",
        )
        .checks(vec![Contains("m", "size=131072k")]),
        case("testMountInvalid/flag", "FROM bb\nRUN --mont=target=/x true\n")
            .fails("unknown flag: --mont (did you mean mount?)"),
        case("testMountInvalid/key", "FROM bb\nRUN --mount=typ=tmpfs,target=/x true\n")
            .fails("unexpected key 'typ'"),
        case("testMountInvalid/type", "FROM bb\nRUN --mount=type=tmp,target=/x true\n")
            .fails("unsupported mount type \"tmp\" (did you mean tmpfs?)"),
        case(
            "testMountFromError",
            "FROM bb AS a\nFROM bb\nARG src=a\nRUN --mount=from=$src,target=/a true\n",
        )
        .fails("'from' doesn't support variable expansion, define alias stage instead"),
        case(
            "testCacheMountUser",
            "FROM bb\nRUN --mount=type=cache,target=/c,uid=1000,gid=1000,mode=0750 stat -c '%u %g %a' /c > /out\n",
        )
        .checks(vec![File("out", "1000 1000 750\n")]),
        case(
            "testCacheMountDefaultID",
            "FROM bb\nRUN --mount=type=cache,target=/shared echo one > /shared/f\nRUN --mount=type=cache,target=/shared cat /shared/f > /out\nRUN --mount=type=cache,target=/other ls /other | wc -l > /count\n",
        )
        .checks(vec![File("out", "one\n"), File("count", "0\n")]),
        case(
            "testMountEnvVar",
            "FROM bb\nENV SOME_PATH=/mnt/t\nARG MNT_TYPE=tmpfs\nRUN --mount=type=$MNT_TYPE,target=$SOME_PATH mount | grep -c ' /mnt/t ' > /out\n",
        )
        .checks(vec![File("out", "1\n")]),
        // 8. RUN --network, --security
        case(
            "testRunNoNetwork",
            "FROM bb\nRUN --network=none ls /sys/class/net > /net\n",
        )
        .checks(vec![File("net", "lo\n")]),
        case(
            "testRunSecurityInsecure/denied",
            "FROM bb\nRUN --security=insecure true\n",
        )
        .fails("security.insecure"),
        case(
            "testRunSecuritySandbox",
            "FROM bb\nRUN --security=sandbox grep CapBnd /proc/self/status > /caps\n",
        )
        .checks(vec![File("caps", "CapBnd:\t00000000a80425fb\n")]),
        case(
            "testDockerfileCheckHostname",
            "FROM bb\nRUN grep localhost /etc/hosts > /hosts && echo \"$HOSTNAME $(hostname)\" > /name\n",
        )
        .flags(&["--build-arg", "BUILDKIT_SANDBOX_HOSTNAME=foo"])
        .checks(vec![
            File("hosts", "127.0.0.1\tlocalhost foo\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
            File("name", "foo foo\n"),
        ])
        // The hostname is part of the step: with it unset (empty) the step
        // runs again.
        .rebuild(&["--build-arg", "BUILDKIT_SANDBOX_HOSTNAME="], vec![NoLog("#2 CACHED"), File("name", "buildkitsandbox buildkitsandbox\n")]),
        case(
            "testExtraHosts",
            "FROM bb\nRUN tail -n +3 /etc/hosts > /hosts\n",
        )
        .flags(&["--add-host", "Some.Host:1.2.3.4", "--add-host", "v6=[fe80::1]"])
        .checks(vec![File("hosts", "1.2.3.4\tsome.host\nfe80::1\tv6\n")])
        .rebuild(
            &["--add-host", "some.host=1.2.3.5"],
            vec![
                NoLog("#2 CACHED"),
                File("hosts", "1.2.3.4\tsome.host\nfe80::1\tv6\n1.2.3.5\tsome.host\n"),
            ],
        ),
        case(
            "testShmSize",
            "FROM bb\nRUN mount | grep /dev/shm | grep -o 'size=[0-9]*k' > /shmsize\n",
        )
        .flags(&["--shm-size", "128m"])
        // One /dev/shm: the step's replaces the runtime's (dedupMounts).
        .checks(vec![File("shmsize", "size=131072k\n")]),
        case(
            "testUlimit",
            "FROM bb\nRUN ulimit -n > /first && ulimit -Hn >> /first\n",
        )
        .flags(&["--ulimit", "nofile=1000:1000"])
        .checks(vec![File("first", "1000\n1000\n")])
        // A limit is part of the step: another one runs it again. (Values
        // under any host's hard limit: raising one needs CAP_SYS_RESOURCE.)
        .rebuild(
            &["--ulimit", "nofile=900:1000"],
            vec![NoLog("#2 CACHED"), File("first", "900\n1000\n")],
        ),
        // 9. COPY
        case(
            "testDockerfileCopyFromArgs",
            "FROM bb\nARG FOO=bb\nCOPY --from=$FOO /bin/busybox /x\n",
        )
        .fails("variable expansion is not supported for --from"),
        case(
            "testEmptyDestDir",
            "FROM bb\nENV empty=\"\"\nWORKDIR /w\nCOPY testfile $empty\nWORKDIR /l\nCOPY --link testfile $empty\n",
        )
        .files(&[("testfile", "t")])
        .checks(vec![File("w/testfile", "t"), File("l/testfile", "t")]),
        case("testPreserveDestDirSlash", "FROM bb\nCOPY testfile /sample/\n")
            .files(&[("testfile", "t")])
            .checks(vec![File("sample/testfile", "t")]),
        case(
            "testCopyLinkDotDestDir",
            "FROM bb\nWORKDIR /var/www\nCOPY --link testfile .\n",
        )
        .files(&[("testfile", "t")])
        .checks(vec![File("var/www/testfile", "t")]),
        // A destination that is a symlink is followed inside the root, the
        // last component too (Docker's BuildKit wrote through the link).
        case(
            "testSymlinkDestination/file",
            "FROM bb\nRUN echo old > /file && ln -s /file /flink && ln -s file /rlink\n\
             COPY g /flink\nRUN cat /file > /first\nCOPY h /rlink\nRUN readlink /flink > /links && readlink /rlink >> /links\n",
        )
        .files(&[("g", "new\n"), ("h", "h\n")])
        .checks(vec![
            File("first", "new\n"),
            File("file", "h\n"),
            File("links", "/file\nfile\n"),
        ]),
        case(
            "testSymlinkDestination/loop",
            "FROM bb\nRUN ln -s loop1 /loop2 && ln -s loop2 /loop1\nCOPY g /loop1\n",
        )
        .files(&[("g", "new\n")])
        .fails("cannot copy to /loop1: too many levels of symbolic links"),
        // From another stage a copy keeps the files' owners (a context's
        // are root's) and makes devices and fifos again (fsutil's copy),
        // as Docker's BuildKit gave the owners.
        case(
            "testCopyChown/from-a-stage",
            "FROM bb AS s\nRUN mkdir -p /x/d && echo h > /x/h && chown 7:8 /x/h && chown 9:10 /x/d \
             && mkfifo /x/fifo && mknod /x/null c 1 3\n\
             FROM bb\nCOPY --from=s /x /y\nCOPY --from=s /x/h /one\nCOPY --from=s --chown=1:1 /x /two\n\
             COPY g /ctx\nRUN stat -c '%F %t,%T %u' /y/fifo /y/null /two/null > /types\n",
        )
        .files(&[("g", "g")])
        .checks(vec![
            Owner("y", 0, 0),
            Owner("y/h", 7, 8),
            Owner("y/d", 9, 10),
            Owner("one", 7, 8),
            Owner("two/h", 1, 1),
            Owner("two/d", 1, 1),
            Owner("ctx", 0, 0),
            File("types", "fifo 0,0 0\ncharacter special file 1,3 0\ncharacter special file 1,3 1\n"),
        ]),
        case(
            "testCopyChownExistingDir",
            "FROM bb\nRUN mkdir /existing && chown daemon:daemon /existing\nCOPY dir/ /existing/\nCOPY dir/ /created/\n",
        )
        .files(&[("dir/f", "f")])
        .checks(vec![
            Owner("existing", 1, 1),
            Owner("created", 0, 0),
            Owner("existing/f", 0, 0),
        ]),
        case("testEmptyWildcard", "FROM bb\nCOPY foo nomatch* /\n")
            .files(&[("foo", "foo")])
            .checks(vec![File("foo", "foo")]),
        case(
            "testCopyChownCreateDest",
            "FROM bb\nARG group=extra\nENV owner=user\nCOPY --chown=${owner}:${group} foo /new/dir/foo\n",
        )
        .files(&[("foo", "x")])
        // The directories the copy makes are the owner's too.
        .checks(vec![
            Owner("new/dir/foo", 1000, 2000),
            Owner("new/dir", 1000, 2000),
            Owner("new", 1000, 2000),
        ]),
        case(
            "testCopyChown",
            "FROM bb\nCOPY --chown=daemon foo /daemon\nCOPY --chown=1000:nogroup foo /mixed\nCOPY --chown=user dir /d/\n",
        )
        .files(&[("foo", "x"), ("dir/a/b", "b")])
        .checks(vec![
            Owner("daemon", 1, 1),
            Owner("mixed", 1000, 65534),
            Owner("d/a/b", 1000, 1000),
            Owner("d/a", 1000, 1000),
        ]),
        // BuildKit's ChownOpt rules (Docker's BuildKit gave the same): an
        // id is its own group whatever passwd says; an unknown user is 0,
        // an unknown group leaves the user's; WORKDIR's new directories
        // follow them for the USER.
        case(
            "testCopyChown/ids",
            "FROM bb\nRUN echo 'odd:x:1500:2000::/:/bin/sh' >> /etc/passwd\n\
             COPY --chown=1500 foo /byid\nCOPY --chown=odd foo /byname\n\
             COPY --chown=nosuch foo /nouser\nCOPY --chown=user:nosuchgroup foo /nogroup\n\
             USER 1500\nWORKDIR /w/x\nUSER nosuch\nWORKDIR /v\n",
        )
        .files(&[("foo", "x")])
        .checks(vec![
            Owner("byid", 1500, 1500),
            Owner("byname", 1500, 2000),
            Owner("nouser", 0, 0),
            Owner("nogroup", 1000, 1000),
            Owner("w", 1500, 1500),
            Owner("w/x", 1500, 1500),
            Owner("v", 0, 0),
        ]),
        case(
            "testCopyChmod",
            "FROM bb\nARG mode=0644\nCOPY --chmod=0 foo /zero\nCOPY --chmod=${mode} foo /arg\nCOPY --chmod=777 foo /parent/foo\nCOPY --chmod=770 foo /parent/sub/foo\n",
        )
        .files(&[("foo", "x")])
        .checks(vec![
            Mode("zero", 0),
            Mode("arg", 0o644),
            Mode("parent/foo", 0o777),
            Mode("parent", 0o777),
            Mode("parent/sub", 0o770),
        ]),
        case(
            "testChmodNonOctal",
            "FROM bb\nCOPY --chmod=go-w f /a\nCOPY --chmod=u=rw,g=r,o=r f /b\nCOPY --chmod=a+X d /c/\nCOPY --chmod=u+rw,g+r,o-x,o+w f /e\n",
        )
        .files(&[("f", "x"), ("d/x", "x")])
        .checks(vec![
            Mode("a", 0o644),
            Mode("b", 0o644),
            Mode("c/x", 0o644),
            Mode("e", 0o646),
        ]),
        case("testCopyInvalidChmod", "FROM bb\nCOPY --chmod=64a foo /x\n")
            .files(&[("foo", "x")])
            .fails("invalid chmod parameter: '64a'. it should be octal string and between 0 and 07777"),
        case(
            "testCopyOverrideFiles",
            "FROM bb\nCOPY sub /dest\nCOPY sub /dest\nCOPY foo /file\nCOPY foo /file\n",
        )
        .files(&[("sub/x", "x"), ("foo", "foo")])
        .checks(vec![File("dest/x", "x"), File("file", "foo")]),
        case(
            "testCopyVarSubstitution",
            "FROM bb\nENV FOO=bar\nCOPY $FOO baz\n",
        )
        .files(&[("bar", "bar-content")])
        .checks(vec![File("baz", "bar-content")]),
        case(
            "testCopyWildcards",
            "FROM bb\nCOPY *.go /gofiles/\nCOPY f*.go /single.go\nCOPY sub/* /subdest/\nCOPY sub/*/dir2/foo /subdest2/\nCOPY sub/dir1/. /dot/\n",
        )
        .files(&[
            ("foo.go", "foo"),
            ("bar.go", "bar"),
            ("sub/dir1/dir2/foo", "deep"),
            ("sub/file", "file"),
        ])
        .checks(vec![
            File("gofiles/foo.go", "foo"),
            File("gofiles/bar.go", "bar"),
            File("single.go", "foo"),
            File("subdest/dir2/foo", "deep"),
            File("subdest/file", "file"),
            File("subdest2/foo", "deep"),
            File("dot/dir2/foo", "deep"),
        ]),
        case(
            "testCopyRelative/dest",
            "FROM bb\nWORKDIR /test1/test2\nCOPY foo ../rel\nCOPY foo ./here\n",
        )
        .files(&[("foo", "x")])
        .checks(vec![File("test1/rel", "x"), File("test1/test2/here", "x")]),
        case("testCopyUnicodePath", "FROM bb\nCOPY test%C3%A4.txt ä+.txt /\n")
            .files(&[("test%C3%A4.txt", "a"), ("ä+.txt", "b")])
            .checks(vec![File("test%C3%A4.txt", "a"), File("ä+.txt", "b")]),
        case(
            "testCopyThroughSymlinkContext",
            "FROM bb\nCOPY link/foo /foo\n",
        )
        .files(&[("sub/foo", "via-link")])
        .links(&[("link", "sub")])
        .checks(vec![File("foo", "via-link")]),
        case(
            "testCopyThroughSymlinkMultiStage",
            "FROM bb AS st\nRUN mkdir /real && echo deep > /real/foo && ln -s /real /abs && ln -s real /rel\nFROM scratch\nCOPY --from=st /abs/foo /a\nCOPY --from=st /rel/foo /b\n",
        )
        .checks(vec![File("a", "deep\n"), File("b", "deep\n")]),
        case("testCopySymlinks", "FROM scratch\nCOPY link /copied\nCOPY l* /wild/\n")
            .files(&[("target", "content")])
            .links(&[("link", "target")])
            .checks(vec![File("copied", "content"), File("wild/link", "content")]),
        case(
            "testSymlinkDestination",
            "FROM bb\nRUN mkdir -p /tmp/symlink-target && ln -s ../tmp/symlink-target /symlink\nCOPY foo /symlink/\n",
        )
        .files(&[("foo", "x")])
        .checks(vec![File("tmp/symlink-target/foo", "x")]),
        case(
            "testWorkdirCopyIgnoreRelative",
            "FROM bb AS base\nWORKDIR /w\nRUN echo root > /file && echo wd > /w/file\nFROM scratch\nCOPY --from=base file /out\n",
        )
        .checks(vec![File("out", "root\n")]),
        case(
            "testExcludedFilesOnCopy",
            "FROM scratch AS builder1\nCOPY --exclude=*/*.png --exclude=*/*.jpeg . /1\nFROM scratch AS builder3\nADD --exclude=*.mp3 dir3/ /3/\nFROM scratch AS builder4\nCOPY --exclude=*.mp3 --exclude=*.png dir* /4/\nFROM scratch AS builder6\nADD --exclude=* dir* /6\nFROM scratch\nCOPY --from=builder1 / /b1\nCOPY --from=builder3 / /b3\nCOPY --from=builder4 / /b4\nCOPY --from=builder6 / /b6\n",
        )
        .files(&[
            ("dir1/file-101.png", "2"),
            ("dir1/file-102.txt", "3"),
            ("dir3/file-301.mp3", "9"),
            ("dir3/file-302.mpeg", "10"),
        ])
        .checks(vec![
            Missing("b1/1/dir1/file-101.png"),
            File("b1/1/dir1/file-102.txt", "3"),
            File("b1/1/dir3/file-301.mp3", "9"),
            Missing("b3/3/file-301.mp3"),
            File("b3/3/file-302.mpeg", "10"),
            Missing("b4/4/file-101.png"),
            File("b4/4/file-102.txt", "3"),
            Missing("b4/4/file-301.mp3"),
            Mode("b6/6", 0o755),
            Missing("b6/6/file-102.txt"),
        ]),
        // 11. ONBUILD
        case(
            "testOnBuildCleared",
            "FROM bb AS parent\nONBUILD RUN echo x >> /count\nFROM parent AS child\nFROM child\n",
        )
        .checks(vec![File("count", "x\n"), Config("/config/OnBuild", Value::Null)]),
        case(
            "testOnBuildInheritedStageWithFrom",
            "FROM bb AS src\nRUN echo from-src > /s\nFROM bb AS parent\nONBUILD COPY --from=src /s /copied\nFROM parent\n",
        )
        .checks(vec![File("copied", "from-src\n")]),
        // 12. .dockerignore
        // A `!` pattern re-includes a file inside an ignored directory: the
        // context sends it and its directory, as Docker's BuildKit did; the
        // rest of the directory stays out, of the copy and of its key.
        case(
            "testDockerignore/reinclude-below-an-ignored-dir",
            "FROM bb\nCOPY . /all/\nCOPY src/a /one/\nRUN --mount=type=bind,target=/ctx ls -R /ctx/src > /bound\n",
        )
        .files(&[
            ("src/a/f", "f1"),
            ("src/a/g", "g"),
            ("src/b", "b"),
            (".dockerignore", "src/a\n!src/a/f\n"),
        ])
        .checks(vec![
            File("all/src/a/f", "f1"),
            Missing("all/src/a/g"),
            File("all/src/b", "b"),
            File("one/f", "f1"),
            Missing("one/g"),
            Contains("bound", "/ctx/src/a:\nf\n"),
        ])
        .before_rebuild(|ctx| std::fs::write(ctx.join("src/a/g"), "changed").unwrap())
        .rebuild(&[], vec![Log("#2 CACHED"), Log("#3 CACHED")]),
        case("testDockerignore", "FROM scratch\nCOPY . .\n")
            .files(&[
                ("foo", "foo"),
                ("bar", "bar"),
                ("baz", "baz"),
                ("bay", "bay"),
                (".dockerignore", "ba*\n!bay\nDockerfile\n.dockerignore\n"),
            ])
            .checks(vec![
                File("foo", "foo"),
                File("bay", "bay"),
                Missing("bar"),
                Missing("baz"),
                Missing("Dockerfile"),
                Missing(".dockerignore"),
            ]),
        case("testDockerignoreInvalid", "FROM scratch\nCOPY . .\n")
            .files(&[(".dockerignore", "!\n")])
            .fails(".dockerignore"),
        case("testDockerignoreOverride", "FROM scratch\nCOPY . .\n")
            .named("Dockerfile2")
            .files(&[
                ("foo", "foo"),
                ("bar", "bar"),
                (".dockerignore", "foo\n"),
                ("Dockerfile2.dockerignore", "bar\n"),
            ])
            .checks(vec![File("foo", "foo"), Missing("bar")]),
        case("testCopyIgnoredFiles", "FROM scratch\nCOPY ignored /x\n")
            .files(&[("ignored", "x"), (".dockerignore", "ignored\n")])
            .fails("not found"),
        // 17. SOURCE_DATE_EPOCH
        case("testSourceDateEpochDockerfileDefaultInvalid", "FROM bb\n")
            .flags(&["--build-arg", "SOURCE_DATE_EPOCH=not-a-timestamp"])
            .fails("invalid SOURCE_DATE_EPOCH: not-a-timestamp"),
        case(
            "testSourceDateEpochWithoutExporter",
            "FROM bb\nRUN echo x > /x\nENV a=b\n",
        )
        .flags(&["--build-arg", "SOURCE_DATE_EPOCH=1700000000"])
        .checks(vec![
            Config("/created", json!("2023-11-14T22:13:20Z")),
            Config("/history/3/created", json!("2023-11-14T22:13:20Z")),
            Config("/history/4/created", json!("2023-11-14T22:13:20Z")),
        ]),
        case(
            "testSourceDateEpochDockerfileDefault",
            "ARG SOURCE_DATE_EPOCH=1234567890\nFROM bb\nENV a=b\n",
        )
        .checks(vec![Config("/created", json!("2009-02-13T23:31:30Z"))]),
        // Second batch: stages, args, history, ADD archives, caching.
        case(
            "testExportedHistoryFlattenArgs",
            "FROM bb\nARG foo=bar\nARG bar=123\nARG foo=bar2\nRUN ls /etc/ > /dev/null\n",
        )
        .checks(vec![
            Config("/history/3/created_by", json!("ARG foo=bar")),
            Config("/history/4/created_by", json!("ARG bar=123")),
            Config("/history/5/created_by", json!("ARG foo=bar2")),
            Config(
                "/history/6/created_by",
                json!("RUN |2 foo=bar2 bar=123 /bin/sh -c ls /etc/ > /dev/null # buildkit"),
            ),
        ]),
        case(
            "testArgDefaultExpansion",
            "FROM bb\nARG FOO\nARG BAR=${FOO:?\"foo missing\"}\nRUN echo $BAR > /bar\n",
        )
        .fails("FOO: foo missing"),
        case(
            "testArgDefaultExpansion/given",
            "FROM bb\nARG FOO\nARG BAR=${FOO:?\"foo missing\"}\nRUN echo $BAR > /bar\n",
        )
        .flags(&["--build-arg", "FOO=given"])
        .checks(vec![File("bar", "given\n")]),
        case(
            "testTargetStageNameArg",
            "FROM bb AS mystage\nRUN echo \"[$TARGETSTAGE]\" > /before\nARG TARGETSTAGE\nRUN echo $TARGETSTAGE > /after\n",
        )
        .checks(vec![File("before", "[]\n"), File("after", "mystage\n")]),
        case(
            "testPlatformArgsImplicit",
            "FROM bb AS stage-linux\nRUN echo linux > /os\nFROM stage-$TARGETOS\nARG TARGETPLATFORM\nRUN echo $TARGETPLATFORM > /platform\n",
        )
        .checks(vec![File("os", "linux\n"), File("platform", "linux/amd64\n")]),
        case(
            "testMultiStageImplicitFrom/stage-hides-image",
            "FROM scratch AS bb\nCOPY foo /foo\nFROM scratch\nCOPY --from=bb /foo /bar\n",
        )
        .files(&[("foo", "from-stage")])
        .checks(vec![File("bar", "from-stage"), Missing("bin")]),
        case(
            "testDefaultShellAndPath",
            "FROM scratch\nENTRYPOINT foo bar\n",
        )
        .checks(vec![
            Config("/config/Entrypoint", json!(["/bin/sh", "-c", "foo bar"])),
            Config(
                "/config/Env",
                json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]),
            ),
        ]),
        case("testRunHostNetwork/denied", "FROM bb\nRUN --network=host true\n")
            .fails("network.host"),
        case(
            "testRunHostNetwork/allowed",
            "FROM bb\nRUN --network=host ls /sys/class/net | grep -c . > /count\n",
        )
        .flags(&["--allow", "network.host"]),
        case(
            "testPullScratch/base",
            "FROM scratch\nLABEL base=label\n",
        )
        .tag("scratch-label"),
        case(
            "testPullScratch",
            "FROM scratch-label\nLABEL own=label\nCOPY foo /foo\n",
        )
        .files(&[("foo", "x")])
        .checks(vec![
            Config("/config/Labels", json!({"base": "label", "own": "label"})),
            Count("/rootfs/diff_ids", 1),
        ]),
        case(
            "testDockerfileAddArchive",
            "FROM scratch\nADD t.tar /plain/\nADD t.tar.gz /gz/\nADD --unpack=false t.tar /kept/\nCOPY t.tar /copied/\n",
        )
        .setup(|ctx| sh(ctx, "mkdir -p a && echo in-tar > a/f && tar -cf t.tar a && gzip -k t.tar && rm -r a"))
        .checks(vec![
            File("plain/a/f", "in-tar\n"),
            File("gz/a/f", "in-tar\n"),
            Mode("kept/t.tar", 0o644),
            Mode("copied/t.tar", 0o644),
            Missing("kept/a"),
        ]),
        case(
            "testDockerfileAddChownArchive",
            "FROM scratch\nADD --chown=100:200 t.tar /out/\n",
        )
        .setup(|ctx| sh(ctx, "mkdir -p d/sub && echo x > d/sub/f && tar -cf t.tar d && rm -r d"))
        .checks(vec![Owner("out/d/sub/f", 100, 200), Owner("out/d/sub", 100, 200)]),
        case("testDockerfileAddArchiveWildcard", "FROM scratch\nADD *.tar /dest/\n")
            .setup(|ctx| {
                sh(ctx, "echo 1 > one && echo 2 > two && tar -cf a.tar one && tar -cf b.tar two && rm one two")
            })
            .checks(vec![File("dest/one", "1\n"), File("dest/two", "2\n")]),
        case(
            "testDockerfileAddArchiveWithImpliedParentDir",
            "FROM scratch\nADD t.tar /out/\n",
        )
        .setup(|ctx| {
            sh(ctx, "mkdir -p x/y && echo deep > x/y/f && tar -cf t.tar x/y/f && rm -r x")
        })
        .checks(vec![File("out/x/y/f", "deep\n"), Mode("out/x/y", 0o755)]),
        case(
            "testBuiltinArgs/cache",
            "FROM bb\nARG FOO\nRUN echo \"$FOO\" > /foo\n",
        )
        .flags(&["--build-arg", "FOO=1", "--build-arg", "http_proxy=http://a:1"])
        .rebuild(
            &["--build-arg", "http_proxy=http://b:2"],
            vec![Log("#2 CACHED"), File("foo", "1\n")],
        ),
        case(
            "testBuiltinArgs/arg-change",
            "FROM bb\nARG FOO\nRUN echo \"$FOO\" > /foo\n",
        )
        .flags(&["--build-arg", "FOO=1"])
        .rebuild(
            &["--build-arg", "FOO=2"],
            vec![NoLog("#2 CACHED"), File("foo", "2\n")],
        ),
        case(
            "testCopyWildcardCache",
            "FROM bb\nCOPY foo* /files/\nRUN ls /files > /list\n",
        )
        .files(&[("foo1", "1"), ("foo2", "2"), ("bar", "b")])
        .before_rebuild(|ctx| std::fs::write(ctx.join("bar"), "changed").unwrap())
        .rebuild(
            &[],
            vec![Log("#2 CACHED"), Log("#3 CACHED"), File("list", "foo1\nfoo2\n")],
        ),
        case(
            "testCopyWildcardCache/matched-change",
            "FROM bb\nCOPY foo* /files/\nRUN cat /files/* > /all\n",
        )
        .files(&[("foo1", "1"), ("foo2", "2")])
        .before_rebuild(|ctx| std::fs::write(ctx.join("foo2"), "3").unwrap())
        .rebuild(&[], vec![NoLog("#2 CACHED"), File("all", "13")]),
        case(
            "testWildcardRenameCache",
            "FROM bb\nCOPY file* /files/\nRUN ls /files > /list\n",
        )
        .files(&[("file1", "1")])
        .before_rebuild(|ctx| std::fs::rename(ctx.join("file1"), ctx.join("file2")).unwrap())
        .rebuild(&[], vec![NoLog("#2 CACHED"), File("list", "file2\n")]),
        case(
            "testNoCache",
            "FROM bb AS s0\nRUN echo s0 > /s0\nFROM s0 AS s1\nRUN echo s1 > /s1\n",
        )
        .rebuild(
            &["--no-cache-filter", "s1"],
            vec![Log("#2 CACHED"), NoLog("#3 CACHED"), File("s1", "s1\n")],
        ),
        case(
            "testWorkdirSourceDateEpochReproducible",
            "FROM scratch\nWORKDIR /mydir\n",
        )
        .flags(&["--build-arg", "SOURCE_DATE_EPOCH=1234567890"])
        .before_rebuild(|_| std::thread::sleep(std::time::Duration::from_millis(1100)))
        .rebuild(&["--no-cache"], vec![SameImage, Mode("mydir", 0o755)]),
        case(
            "testReproducibleIDs",
            "FROM bb\nENV foo=bar\nCOPY foo /\nRUN echo bar > /bar\n",
        )
        .files(&[("foo", "foo")])
        .rebuild(&[], vec![SameImage]),
        // moby/buildkit#5305: a --no-cache build gets an empty cache mount
        // and leaves the shared one as it was.
        case(
            "testCacheMountModeNoCache",
            "FROM bb\nARG FOO=abc\nRUN --mount=type=cache,target=/cache,mode=0773,id=nocache-5305 touch /cache/$FOO && ls /cache | wc -l > /out && stat -c %a /cache > /mode\n",
        )
        .checks(vec![File("out", "1\n"), File("mode", "773\n")])
        .rebuild(
            &["--no-cache", "--build-arg", "FOO=def"],
            vec![File("out", "1\n"), File("mode", "773\n")],
        ),
        case(
            "testCacheMountModeNoCache/after",
            "FROM bb\nARG FOO=ghi\nRUN --mount=type=cache,target=/cache,mode=0773,id=nocache-5305 touch /cache/$FOO && ls /cache > /out\n",
        )
        .checks(vec![File("out", "abc\nghi\n")]),
        // Third batch: mounts, symlinks, contexts, ONBUILD.
        case(
            "testCacheMountSourceEscape",
            "FROM bb\nRUN --mount=type=cache,target=/c,id=escape ln -s /etc /c/link\nRUN --mount=type=cache,target=/m,id=escape,source=link ls /m > /listing\n",
        )
        .fails("source"),
        case(
            "testMountTmpfs/gone",
            "FROM bb\nRUN --mount=type=tmpfs,target=/t touch /t/f\nRUN test ! -e /t/f && echo gone > /r\n",
        )
        .checks(vec![File("r", "gone\n")]),
        case(
            "testMountDuplicate",
            "FROM bb\nRUN --mount=source=.,target=/ctx --mount=source=foo,target=/foo cat /ctx/foo /foo > /out\n",
        )
        .files(&[("foo", "a")])
        .before_rebuild(|ctx| std::fs::write(ctx.join("foo"), "b").unwrap())
        .rebuild(&[], vec![File("out", "bb")]),
        case(
            "testMountRWCache",
            "FROM bb AS src\nCOPY dir /dir\nCOPY other /other\nFROM bb\nRUN --mount=from=src,src=/dir,target=/m,rw cat /m/f > /out && cat /proc/sys/kernel/random/uuid > /stamp && echo w > /m/written\nRUN test ! -e /m/written && echo discarded > /r\n",
        )
        .files(&[("dir/f", "mounted"), ("other", "1")])
        .checks(vec![File("out", "mounted"), File("r", "discarded\n")])
        .before_rebuild(|ctx| std::fs::write(ctx.join("other"), "2").unwrap())
        .rebuild(&[], vec![File("out", "mounted"), Unchanged("stamp")]),
        case(
            "testMountRWCache/mounted-change",
            "FROM bb AS src\nCOPY dir /dir\nFROM bb\nRUN --mount=from=src,src=/dir,target=/m cat /m/f > /out\n",
        )
        .files(&[("dir/f", "one")])
        .before_rebuild(|ctx| std::fs::write(ctx.join("dir/f"), "two").unwrap())
        .rebuild(&[], vec![File("out", "two")]),
        case(
            "testCopyFollowAllSymlinks",
            "FROM scratch\nCOPY foo/sub/bar /out\n",
        )
        .files(&[("bar/bar", "via-dir-link")])
        .setup(|ctx| sh(ctx, "mkdir foo && ln -s ../bar foo/sub"))
        .checks(vec![File("out", "via-dir-link")]),
        case("testCopySocket", "FROM scratch\nCOPY . /out/\n")
            .setup(|ctx| {
                std::os::unix::net::UnixListener::bind(ctx.join("socket.sock")).unwrap();
            })
            .checks(vec![Mode("out/busybox", 0o755)]),
        case("testContextChangeDirToFile", "FROM scratch\nCOPY foo /\n")
            .files(&[("foo/bar", "in-dir")])
            .before_rebuild(|ctx| {
                std::fs::remove_dir_all(ctx.join("foo")).unwrap();
                std::fs::write(ctx.join("foo"), "now-a-file").unwrap();
            })
            .rebuild(&[], vec![File("foo", "now-a-file"), Missing("bar")]),
        case(
            "testNamedLocalContext",
            "FROM scratch\nCOPY --from=named / /out/\n",
        )
        .files(&[
            ("namedctx/kept", "k"),
            ("namedctx/ignored", "i"),
            ("namedctx/.dockerignore", "ignored\n"),
        ])
        .flags(&["--build-context", "named={ctx}/namedctx"])
        .checks(vec![File("out/kept", "k"), Missing("out/ignored")]),
        case(
            "testOnBuildNewDeps",
            "FROM bb AS parent\nONBUILD COPY --from=bb /bin/busybox /copied\nFROM parent\n",
        )
        .checks(vec![Mode("copied", 0o755)]),
        case(
            "testOnBuildWithCacheMount",
            "FROM bb AS parent\nONBUILD RUN --mount=type=cache,target=/c,id=onbuild-cache echo x > /c/f\nFROM parent\nRUN --mount=type=cache,target=/c,id=onbuild-cache cat /c/f > /out\n",
        )
        .checks(vec![File("out", "x\n")]),
        case(
            "testOnBuildInheritedStageRun",
            "FROM bb AS parent\nONBUILD RUN echo from-parent > /onbuild\nFROM parent AS child\nRUN cat /onbuild > /seen\n",
        )
        .checks(vec![File("seen", "from-parent\n")]),
        // Found beside BuildKit (issue 12): a step's environment and root.
        case(
            "issue12/runEnvFromScratch",
            "FROM scratch\nCOPY busybox /busybox\nRUN [\"/busybox\", \"sh\", \"-c\", \"/busybox env > /env\"]\n",
        )
        .checks(vec![
            Contains("env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"),
            Contains("env", "HOME=/\n"),
            Config(
                "/config/Env",
                json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]),
            ),
            // The runtime's mount points stay, as runc leaves them.
            Mode("dev", 0o755),
            Mode("proc", 0o755),
            Mode("sys", 0o755),
            Owner("proc", 0, 0),
            Missing("etc"),
        ]),
        case(
            "issue12/expandDefaultPath",
            "FROM scratch\nENV P=$PATH:/extra\n",
        )
        .checks(vec![Config(
            "/config/Env",
            json!([
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "P=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/extra"
            ]),
        )]),
        case(
            "issue12/runHomeFromPasswd",
            "FROM bb\nUSER 1000\nRUN echo $HOME > /tmp/user\nUSER 4242\nRUN echo $HOME > /tmp/nobody\nUSER root\nENV HOME=\nRUN echo \"[$HOME]\" > /tmp/empty\n",
        )
        .checks(vec![
            File("tmp/user", "/home/user\n"),
            File("tmp/nobody", "/\n"),
            File("tmp/empty", "[/root]\n"),
        ]),
        case(
            "issue12/secretEnvWinsOverEnv",
            "FROM bb\nENV TOKEN=plain\nRUN --mount=type=secret,id=tok,env=TOKEN test \"$TOKEN\" = s3cret && echo secret-won > /r\n",
        )
        .files(&[("tok", "s3cret")])
        .flags(&["--secret", "id=tok,src={ctx}/tok"])
        .checks(vec![File("r", "secret-won\n")]),
        // Secret files, /etc/hosts and /etc/resolv.conf are bound
        // nosuid,nodev,noexec as BuildKit binds them: a secret can't be run.
        case(
            "mounts/secretAndEtcFilesNoexec",
            "FROM bb\nRUN --mount=type=secret,id=tool,mode=0755 (/run/secrets/tool 2>/dev/null || echo refused) > /r; \
             grep -E ' /(etc/hosts|etc/resolv.conf|run/secrets/tool) ' /proc/mounts | cut -d' ' -f2,4 | cut -d, -f1-4 | sort > /m\n",
        )
        .files(&[("tool", "#!/bin/sh\necho ran\n")])
        .flags(&["--secret", "id=tool,src={ctx}/tool"])
        .checks(vec![
            File("r", "refused\n"),
            File(
                "m",
                "/etc/hosts ro,nosuid,nodev,noexec\n/etc/resolv.conf ro,nosuid,nodev,noexec\n/run/secrets/tool ro,nosuid,nodev,noexec\n",
            ),
        ]),
        // A bind of the context shows what the ignore file keeps, and
        // what the step writes stays in the step.
        case(
            "issue12/bindMountDockerignore",
            "FROM bb\nRUN --mount=type=bind,target=/c ls -a /c > /list && ls /c/dir > /dirlist\n",
        )
        .files(&[
            ("kept", "k"),
            ("ignored", "i"),
            ("dir/ok", "o"),
            ("dir/no", "n"),
            ("gone/x", "x"),
            (".dockerignore", "ignored\ndir/*\n!dir/ok\ngone\n"),
        ])
        .checks(vec![
            File("list", ".\n..\n.dockerignore\nDockerfile\nbusybox\ndir\nkept\n"),
            File("dirlist", "ok\n"),
        ]),
        case(
            "issue12/bindMountSubdirAndIgnoredSource",
            "FROM bb\nRUN --mount=type=bind,source=sub,target=/c ls /c > /list\nRUN --mount=type=bind,source=sub/secret,target=/s cat /s\n",
        )
        .files(&[("sub/a", "a"), ("sub/secret", "s"), (".dockerignore", "sub/secret\n")])
        .fails("bind mount source sub/secret: not found in the build context"),
        case(
            "issue12/bindMountSubdirIgnore",
            "FROM bb\nRUN --mount=type=bind,source=sub,target=/c ls /c > /list\n",
        )
        .files(&[("sub/a", "a"), ("sub/secret", "s"), (".dockerignore", "sub/secret\n")])
        .checks(vec![File("list", "a\n")]),
        case(
            "issue12/bindMountRwStaysInStep",
            "FROM bb\nRUN --mount=type=bind,target=/c,rw echo changed > /c/kept && rm /c/busybox && cat /c/kept > /seen\nRUN --mount=type=bind,target=/c cat /c/kept > /after && test -f /c/busybox\n",
        )
        .files(&[("kept", "k")])
        .checks(vec![File("seen", "changed\n"), File("after", "k")]),
        case(
            "issue12/dockerfileIgnoreOutsideContext",
            "FROM bb\nCOPY . /out/\nRUN --mount=type=bind,target=/c ls /c > /list\n",
        )
        .files(&[("foo", "foo"), ("bar", "bar"), (".dockerignore", "foo\n")])
        .setup(|ctx| {
            let dir = ctx.parent().unwrap().join("dockerfiles");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(ctx.join("Dockerfile"), dir.join("Dockerfile")).unwrap();
            std::fs::write(dir.join("Dockerfile.dockerignore"), "bar\nbusybox\n").unwrap();
        })
        .flags(&["-f", "{ctx}/../dockerfiles/Dockerfile"])
        .checks(vec![
            File("out/foo", "foo"),
            Missing("out/bar"),
            Missing("out/busybox"),
            File("list", "Dockerfile\nfoo\n"),
        ]),
        case(
            "issue12/namedContextBindMount",
            "FROM bb\nRUN --mount=type=bind,from=named,target=/n ls -a /n > /list && cat /n/kept > /content\n",
        )
        .files(&[
            ("namedctx/kept", "v1"),
            ("namedctx/ignored", "i"),
            ("namedctx/.dockerignore", "ignored\n"),
        ])
        .flags(&["--build-context", "named={ctx}/namedctx"])
        .checks(vec![
            File("list", ".\n..\n.dockerignore\nkept\n"),
            File("content", "v1"),
        ])
        .before_rebuild(|ctx| std::fs::write(ctx.join("namedctx/kept"), "v2").unwrap())
        .rebuild(&[], vec![File("content", "v2")]),
        // A named directory context as a stage's base: its files (its
        // ignore file applied) are the root; a change rebuilds.
        case(
            "issue12/fromNamedContext",
            "FROM named\nRUN [\"/busybox\", \"sh\", \"-c\", \"/busybox cat /f > /seen\"]\n",
        )
        .files(&[("namedctx/f", "v1"), ("namedctx/skip", "s"), ("namedctx/.dockerignore", "skip\n")])
        .setup(|ctx| {
            std::fs::copy("/bin/busybox", ctx.join("namedctx/busybox")).unwrap();
        })
        .flags(&["--build-context", "named={ctx}/namedctx"])
        .checks(vec![
            File("seen", "v1"),
            File("f", "v1"),
            Missing("skip"),
            Mode("busybox", 0o755),
        ])
        .before_rebuild(|ctx| std::fs::write(ctx.join("namedctx/f"), "v2").unwrap())
        .rebuild(&[], vec![File("seen", "v2")]),
        // Hard links stay hard links: made by a step, copied from the
        // context or from another stage, exported.
        case(
            "issue12/hardLinksKept",
            "FROM bb AS s\nRUN mkdir /data && echo x > /data/r1 && ln /data/r1 /data/r2\nFROM scratch\nCOPY a b /c/\nCOPY . /all/\nCOPY --from=s /data/ /s/\n",
        )
        .files(&[("a", "a")])
        .setup(|ctx| sh(ctx, "ln a b"))
        .checks(vec![
            Linked("c/a", "c/b"),
            Linked("all/a", "all/b"),
            Linked("s/r1", "s/r2"),
            File("s/r2", "x\n"),
        ]),
    ]
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs one case; what went wrong, if anything.
fn run_case(root: &Path, dir: &Path, i: usize, c: &Case) -> Result<(), String> {
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    std::fs::write(ctx.join(c.dockerfile_name), &c.dockerfile).unwrap();
    for (path, content) in &c.files {
        let p = ctx.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    for (path, target) in &c.links {
        std::os::unix::fs::symlink(target, ctx.join(path)).unwrap();
    }
    if let Some(setup) = c.setup {
        setup(&ctx);
    }
    let out = dir.join("out");
    let tag = c.tag.map_or_else(|| format!("case{i}"), str::to_string);
    let build = |extra: &[&str]| {
        let _ = std::fs::remove_dir_all(&out);
        let mut args: Vec<String> = [
            "build",
            "--progress",
            "plain",
            "-t",
            &tag,
            "-o",
            &format!("type=local,dest={}", out.display()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // A Dockerfile under another name needs -f, unless `Dockerfile`
        // links to it.
        let found = ["Dockerfile", "dockerfile"].contains(&c.dockerfile_name)
            || c.links.iter().any(|(path, _)| *path == "Dockerfile");
        if !found {
            args.push("-f".into());
            args.push(ctx.join(c.dockerfile_name).display().to_string());
        }
        // `{ctx}` in a flag is the context directory.
        args.extend(
            c.flags
                .iter()
                .chain(extra)
                .map(|f| f.replace("{ctx}", &ctx.display().to_string())),
        );
        args.push(ctx.display().to_string());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = rbuild(root, &argv);
        let log = text(&o);
        (o, log)
    };
    let (o, log) = build(&[]);
    let checks = match &c.expect {
        Err(message) => {
            if o.status.success() {
                return Err(format!("built, but should fail with {message:?}"));
            }
            if o.status.code() != Some(1) {
                return Err(format!("exit {:?}: {log}", o.status.code()));
            }
            if !log.contains(message) {
                return Err(format!("error lacks {message:?}: {log}"));
            }
            return Ok(());
        }
        Ok(checks) => checks,
    };
    if !o.status.success() {
        return Err(format!("build failed: {log}"));
    }
    let mut problems = check_all(root, &tag, &out, &log, checks, None);
    if let Some((flags, checks)) = &c.rebuild {
        let first = image_config(root, &tag)["Id"].as_str().map(str::to_string);
        let kept: Vec<(&str, Option<String>)> = checks
            .iter()
            .filter_map(|c| match c {
                Check::Unchanged(p) => Some((*p, std::fs::read_to_string(out.join(p)).ok())),
                _ => None,
            })
            .collect();
        if let Some(change) = c.before_rebuild {
            change(&ctx);
        }
        let (o, log) = build(flags);
        if !o.status.success() {
            return Err(format!("rebuild failed: {log}"));
        }
        problems.extend(
            check_all(root, &tag, &out, &log, checks, first.as_deref())
                .into_iter()
                .map(|p| format!("rebuild: {p}")),
        );
        for (p, before) in kept {
            let after = std::fs::read_to_string(out.join(p)).ok();
            if after != before || before.is_none() {
                problems.push(format!("rebuild: {p} changed: {before:?} -> {after:?}"));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// `rbuild inspect TAG`.
fn image_config(root: &Path, tag: &str) -> Value {
    let o = rbuild(root, &["inspect", tag]);
    serde_json::from_slice::<Value>(&o.stdout).unwrap_or(Value::Null)
}

/// The checks that fail after a build exported to `out` and tagged `tag`
/// (`first`: the first build's image id, for a rebuild).
fn check_all(
    root: &Path,
    tag: &str,
    out: &Path,
    log: &str,
    checks: &[Check],
    first: Option<&str>,
) -> Vec<String> {
    let mut config: Option<Value> = None;
    let mut problems = Vec::new();
    for check in checks {
        let problem = match check {
            Check::File(p, want) => match std::fs::read_to_string(out.join(p)) {
                Ok(got) if got == *want => None,
                Ok(got) => Some(format!("{p}: {got:?}, want {want:?}")),
                Err(e) => Some(format!("{p}: {e}")),
            },
            Check::Contains(p, want) => match std::fs::read_to_string(out.join(p)) {
                Ok(got) if got.contains(want) => None,
                Ok(got) => Some(format!("{p}: {got:?} lacks {want:?}")),
                Err(e) => Some(format!("{p}: {e}")),
            },
            Check::Missing(p) => std::fs::symlink_metadata(out.join(p))
                .is_ok()
                .then(|| format!("{p} should not exist")),
            Check::Mode(p, want) => match std::fs::symlink_metadata(out.join(p)) {
                Ok(m) if m.mode() & 0o7777 == *want => None,
                Ok(m) => Some(format!("{p}: mode {:o}, want {want:o}", m.mode() & 0o7777)),
                Err(e) => Some(format!("{p}: {e}")),
            },
            Check::Owner(p, uid, gid) => match std::fs::symlink_metadata(out.join(p)) {
                Ok(m) if (m.uid(), m.gid()) == (*uid, *gid) => None,
                Ok(m) => Some(format!(
                    "{p}: owner {}:{}, want {uid}:{gid}",
                    m.uid(),
                    m.gid()
                )),
                Err(e) => Some(format!("{p}: {e}")),
            },
            Check::Linked(a, b) => {
                let ino =
                    |p: &str| std::fs::symlink_metadata(out.join(p)).map(|m| (m.dev(), m.ino()));
                match (ino(a), ino(b)) {
                    (Ok(x), Ok(y)) if x == y => None,
                    (x, y) => Some(format!("{a} and {b} are not one file: {x:?} {y:?}")),
                }
            }
            Check::Config(pointer, want) => {
                let config = config.get_or_insert_with(|| image_config(root, tag));
                let got = config["Config"]
                    .pointer(pointer)
                    .cloned()
                    .unwrap_or(Value::Null);
                (got != *want).then(|| format!("config {pointer}: {got}, want {want}"))
            }
            Check::Count(pointer, want) => {
                let config = config.get_or_insert_with(|| image_config(root, tag));
                let got = config["Config"]
                    .pointer(pointer)
                    .and_then(Value::as_array)
                    .map(Vec::len);
                (got != Some(*want))
                    .then(|| format!("config {pointer}: {got:?} items, want {want}"))
            }
            Check::Unchanged(_) => None,
            Check::SameImage => {
                let config = config.get_or_insert_with(|| image_config(root, tag));
                let id = config["Id"].as_str();
                (id != first).then(|| format!("image {id:?}, first build {first:?}"))
            }
            Check::Log(want) => (!log.contains(want)).then(|| format!("log lacks {want:?}")),
            Check::NoLog(unwanted) => log
                .contains(unwanted)
                .then(|| format!("log has {unwanted:?}")),
        };
        problems.extend(problem);
    }
    problems
}

#[test]
fn buildkit_behaviours() {
    if !is_root() {
        eprintln!("skipped: building needs root (overlay, namespaces)");
        return;
    }
    let t = tmp("behaviours");
    let root = t.0.join("state");
    let base = t.0.join("base");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::copy("/bin/busybox", base.join("busybox")).unwrap();
    std::fs::write(base.join("Dockerfile"), BASE).unwrap();
    let o = rbuild(&root, &["build", "-q", "-t", "bb", base.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));

    let only = std::env::var("RBUILD_CASE").ok();
    let mut failures = Vec::new();
    let mut ran = 0;
    for (i, c) in cases().iter().enumerate() {
        if only.as_deref().is_some_and(|n| !c.name.contains(n)) {
            continue;
        }
        ran += 1;
        let dir = t.0.join(format!("case{i}"));
        if let Err(e) = run_case(&root, &dir, i, c) {
            failures.push(format!("{} (case{i}): {e}", c.name));
        }
    }
    assert!(ran > 0, "no case matches RBUILD_CASE");
    assert!(
        failures.is_empty(),
        "{} of {ran} behaviours differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
