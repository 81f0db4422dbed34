//! `COPY --chmod` / `ADD --chmod` values: octal (`0755`) or symbolic
//! (`u=rwX,go=rX`), as BuildKit accepts them. The symbolic form is BSD
//! `setmode(3)` semantics, which BuildKit gets from dchapes/mode; this is a
//! port of that behaviour: parse once, apply to each copied file.

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_ISTXT: u32 = 0o1000;
const RWXU: u32 = 0o700;
const RWXG: u32 = 0o070;
const RWXO: u32 = 0o007;
const R_ALL: u32 = 0o444;
const W_ALL: u32 = 0o222;
const X_ALL: u32 = 0o111;
const STANDARD: u32 = S_ISUID | S_ISGID | RWXU | RWXG | RWXO;

const CLEAR: u8 = 1;
const SET: u8 = 2;
const GBITS: u8 = 4;
const OBITS: u8 = 8;
const UBITS: u8 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cmd {
    cmd: u8,
    cmd2: u8,
    bits: u32,
}

/// A parsed `--chmod` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    /// `0755`: these bits, exactly.
    Octal(u32),
    /// `u+x,go-w`: changes relative to each file's mode.
    Symbolic(String, Vec<CmdSet>),
}

/// One compiled step of a symbolic mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmdSet(Cmd);

impl Chmod {
    /// Parses a value with BuildKit's errors.
    pub fn parse(s: &str) -> Result<Chmod, String> {
        let non_octal = || {
            format!(
                "invalid chmod parameter: '{s}'. it should be octal string and between 0 and 07777"
            )
        };
        if let Ok(v) = u32::from_str_radix(s, 8)
            && !s.starts_with('+')
        {
            if v > 0o7777 {
                return Err(non_octal());
            }
            return Ok(Chmod::Octal(v));
        }
        if s.starts_with(|c: char| c.is_ascii_digit()) {
            // Looks numeric: BuildKit reports it as a bad octal value.
            return Err(non_octal());
        }
        let cmds = parse_symbolic(s).ok_or_else(|| "invalid syntax".to_string())?;
        Ok(Chmod::Symbolic(
            s.to_string(),
            cmds.into_iter().map(CmdSet).collect(),
        ))
    }

    /// The new permission bits (0o7777 part) of a file with mode `mode`.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(v) => *v,
            Chmod::Symbolic(_, cmds) => apply(cmds, mode & 0o7777, is_dir),
        }
    }
}

fn add_cmd(cmds: &mut Vec<Cmd>, op: u8, who: u32, oparg: u32, mask: u32) {
    let mut op = op;
    if op == b'=' {
        cmds.push(Cmd {
            cmd: b'-',
            cmd2: 0,
            bits: if who != 0 { who } else { STANDARD },
        });
        op = b'+';
    }
    match op {
        b'+' | b'-' | b'X' => cmds.push(Cmd {
            cmd: op,
            cmd2: 0,
            bits: if who != 0 { who & oparg } else { mask & oparg },
        }),
        b'u' | b'g' | b'o' => {
            let mut c = Cmd {
                cmd: op,
                cmd2: 0,
                bits: 0,
            };
            if who != 0 {
                if who & 0o400 != 0 {
                    c.cmd2 |= UBITS;
                }
                if who & 0o040 != 0 {
                    c.cmd2 |= GBITS;
                }
                if who & 0o004 != 0 {
                    c.cmd2 |= OBITS;
                }
                c.bits = !0;
            } else {
                c.cmd2 = UBITS | GBITS | OBITS;
                c.bits = mask;
            }
            c.cmd2 |= match oparg as u8 {
                b'+' => SET,
                b'-' => CLEAR,
                _ => SET | CLEAR,
            };
            cmds.push(c);
        }
        _ => unreachable!("operators are checked by the parser"),
    }
}

fn parse_symbolic(s: &str) -> Option<Vec<Cmd>> {
    let mut s = s.as_bytes();
    if s.is_empty() {
        return None;
    }
    let mask = !0u32;
    let mut cmds = Vec::new();
    let mut equal_op_done = false;
    loop {
        let mut who = 0u32;
        loop {
            match s.first()? {
                b'a' => who |= STANDARD,
                b'u' => who |= S_ISUID | RWXU,
                b'g' => who |= S_ISGID | RWXG,
                b'o' => who |= RWXO,
                _ => break,
            }
            s = &s[1..];
        }
        'getop: loop {
            let op = *s.first()?;
            s = &s[1..];
            match op {
                b'+' | b'-' => {}
                b'=' => equal_op_done = false,
                _ => return None,
            }
            who &= !S_ISTXT;
            let (mut perm, mut perm_x) = (0u32, 0u32);
            loop {
                let b = s.first().copied().unwrap_or(0);
                match b {
                    b'r' => perm |= R_ALL,
                    b's' => {
                        if who == 0 || who & !RWXO != 0 {
                            perm |= S_ISUID | S_ISGID;
                        }
                    }
                    b't' => {
                        if who == 0 || who & !RWXO != 0 {
                            who |= S_ISTXT;
                            perm |= S_ISTXT;
                        }
                    }
                    b'w' => perm |= W_ALL,
                    b'X' => {
                        if op == b'+' {
                            perm_x = X_ALL;
                        }
                    }
                    b'x' => perm |= X_ALL,
                    b'u' | b'g' | b'o' => {
                        if perm != 0 {
                            add_cmd(&mut cmds, op, who, perm, mask);
                            perm = 0;
                        }
                        if op == b'=' {
                            equal_op_done = true;
                        }
                        if perm_x != 0 {
                            add_cmd(&mut cmds, b'X', who, perm_x, mask);
                            perm_x = 0;
                        }
                        add_cmd(&mut cmds, b, who, u32::from(op), mask);
                    }
                    _ => {
                        if perm != 0 || (op == b'=' && !equal_op_done) {
                            if op == b'=' {
                                equal_op_done = true;
                            }
                            add_cmd(&mut cmds, op, who, perm, mask);
                        }
                        if perm_x != 0 {
                            add_cmd(&mut cmds, b'X', who, perm_x, mask);
                        }
                        break;
                    }
                }
                s = &s[1..];
            }
            if s.is_empty() {
                return Some(compress(cmds));
            }
            if s[0] != b',' {
                continue 'getop;
            }
            s = &s[1..];
            break;
        }
    }
}

fn compress(cmds: Vec<Cmd>) -> Vec<Cmd> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < cmds.len() {
        let c = cmds[i];
        if !matches!(c.cmd, b'+' | b'-' | b'X') {
            out.push(c);
            i += 1;
            continue;
        }
        let (mut set, mut clr, mut x) = (0u32, 0u32, 0u32);
        while i < cmds.len() {
            let c = cmds[i];
            match c.cmd {
                b'-' => {
                    clr |= c.bits;
                    set &= !c.bits;
                    x &= !c.bits;
                }
                b'+' => {
                    set |= c.bits;
                    clr &= !c.bits;
                    x &= !c.bits;
                }
                b'X' => x |= c.bits & !set,
                _ => break,
            }
            i += 1;
        }
        for (cmd, bits) in [(b'-', clr), (b'+', set), (b'X', x)] {
            if bits != 0 {
                out.push(Cmd { cmd, cmd2: 0, bits });
            }
        }
    }
    out
}

fn apply(cmds: &[CmdSet], mode: u32, is_dir: bool) -> u32 {
    let old = mode;
    let mut new = mode;
    for CmdSet(c) in cmds {
        let common = |value: u32, new: &mut u32| {
            if c.cmd2 & CLEAR != 0 {
                let clr = if c.cmd2 & SET != 0 { RWXO } else { value };
                if c.cmd2 & UBITS != 0 {
                    *new &= !((clr << 6) & c.bits);
                }
                if c.cmd2 & GBITS != 0 {
                    *new &= !((clr << 3) & c.bits);
                }
                if c.cmd2 & OBITS != 0 {
                    *new &= !(clr & c.bits);
                }
            }
            if c.cmd2 & SET != 0 {
                if c.cmd2 & UBITS != 0 {
                    *new |= (value << 6) & c.bits;
                }
                if c.cmd2 & GBITS != 0 {
                    *new |= (value << 3) & c.bits;
                }
                if c.cmd2 & OBITS != 0 {
                    *new |= value & c.bits;
                }
            }
        };
        match c.cmd {
            b'u' => {
                let v = (new & RWXU) >> 6;
                common(v, &mut new);
            }
            b'g' => {
                let v = (new & RWXG) >> 3;
                common(v, &mut new);
            }
            b'o' => {
                let v = new & RWXO;
                common(v, &mut new);
            }
            b'+' => new |= c.bits,
            b'-' => new &= !c.bits,
            b'X' if old & X_ALL != 0 || is_dir => new |= c.bits,
            _ => {}
        }
    }
    new & 0o7777
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(s: &str, mode: u32, dir: bool) -> u32 {
        Chmod::parse(s).unwrap().apply(mode, dir)
    }

    #[test]
    fn octal_and_errors() {
        assert_eq!(Chmod::parse("755").unwrap(), Chmod::Octal(0o755));
        assert_eq!(Chmod::parse("04755").unwrap(), Chmod::Octal(0o4755));
        let e =
            "invalid chmod parameter: '17777'. it should be octal string and between 0 and 07777";
        assert_eq!(Chmod::parse("17777").unwrap_err(), e);
        assert!(
            Chmod::parse("0999")
                .unwrap_err()
                .starts_with("invalid chmod parameter")
        );
        assert_eq!(Chmod::parse("u=rwq").unwrap_err(), "invalid syntax");
        assert_eq!(Chmod::parse("").unwrap_err(), "invalid syntax");
        assert_eq!(Chmod::parse("u+x,").unwrap_err(), "invalid syntax");
    }

    #[test]
    fn symbolic_like_chmod() {
        // As in dchapes/mode (BuildKit's): `X` only counts after `+`.
        assert_eq!(sym("u=rwX,go=rX", 0o600, false), 0o644);
        assert_eq!(sym("u=rwX,go=rX", 0o700, false), 0o644);
        assert_eq!(sym("u=rw,go=r,+X", 0o700, false), 0o755);
        assert_eq!(sym("u=rw,go=r,+X", 0o600, true), 0o755);
        assert_eq!(sym("u=rw,go=r,+X", 0o600, false), 0o644);
        assert_eq!(sym("=rw,+X", 0o666, false), 0o666);
        assert_eq!(sym("+X", 0o010, false), 0o111);
        assert_eq!(sym("+x", 0o644, false), 0o755);
        assert_eq!(sym("a-w", 0o666, false), 0o444);
        assert_eq!(sym("go-rwx", 0o777, false), 0o700);
        assert_eq!(sym("u+s", 0o755, false), 0o4755);
        assert_eq!(sym("+t", 0o777, true), 0o1777);
        assert_eq!(sym("g=u", 0o740, false), 0o770);
        assert_eq!(sym("o=", 0o777, false), 0o770);
        assert_eq!(sym("u+x-w", 0o644, false), 0o544);
    }
}
