//! Instruction flags (`--name=value`, bare `--name`), as BuildKit's
//! `instructions/bflag.go`: each instruction declares its flags with a type,
//! and unknown, repeated or ill-typed flags are errors with BuildKit's text.

use std::collections::BTreeMap;

use super::suggest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlagType {
    Bool,
    String,
    Strings,
}

#[derive(Debug, Clone)]
enum Value {
    Bool(bool),
    String(String),
    Strings(Vec<String>),
}

/// The flags an instruction accepts and, after [`Flags::parse`], their values.
#[derive(Debug, Clone)]
pub(crate) struct Flags<'a> {
    args: &'a [String],
    declared: Vec<(&'static str, FlagType)>,
    values: BTreeMap<&'static str, Value>,
    used: Vec<&'static str>,
}

impl<'a> Flags<'a> {
    pub fn new(args: &'a [String]) -> Flags<'a> {
        Flags {
            args,
            declared: Vec::new(),
            values: BTreeMap::new(),
            used: Vec::new(),
        }
    }

    pub fn bool(mut self, name: &'static str, default: bool) -> Self {
        self.declared.push((name, FlagType::Bool));
        self.values.insert(name, Value::Bool(default));
        self
    }

    pub fn string(mut self, name: &'static str, default: &str) -> Self {
        self.declared.push((name, FlagType::String));
        self.values.insert(name, Value::String(default.to_string()));
        self
    }

    pub fn strings(mut self, name: &'static str) -> Self {
        self.declared.push((name, FlagType::Strings));
        self.values.insert(name, Value::Strings(Vec::new()));
        self
    }

    /// Reads the flag words; the first problem is returned as BuildKit words it.
    pub fn parse(mut self) -> Result<Self, String> {
        for arg in self.args {
            if arg == "--" {
                return Ok(self);
            }
            let Some(body) = arg.strip_prefix("--") else {
                return Err(format!("arg should start with -- : {arg}"));
            };
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let flag_name = format!("--{name}");
            let Some(&(key, ty)) = self.declared.iter().find(|(n, _)| *n == name) else {
                let names: Vec<&str> = self.declared.iter().map(|(n, _)| *n).collect();
                return Err(suggest(
                    format!("unknown flag: {flag_name}"),
                    name,
                    &names,
                    true,
                ));
            };
            if self.used.contains(&key) && ty != FlagType::Strings {
                return Err(format!("duplicate flag specified: {flag_name}"));
            }
            if !self.used.contains(&key) {
                self.used.push(key);
            }
            let missing = || format!("missing a value on flag: {flag_name}");
            match ty {
                FlagType::Bool => {
                    if value == Some("") {
                        return Err(missing());
                    }
                    let v = match value.map(str::to_lowercase).as_deref() {
                        None | Some("true") => true,
                        Some("false") => false,
                        Some(_) => {
                            return Err(format!(
                                "expecting boolean value for flag {flag_name}, not: {}",
                                value.unwrap_or_default()
                            ));
                        }
                    };
                    self.values.insert(key, Value::Bool(v));
                }
                FlagType::String => {
                    let v = value.ok_or_else(missing)?;
                    self.values.insert(key, Value::String(v.to_string()));
                }
                FlagType::Strings => {
                    let v = value.ok_or_else(missing)?;
                    if let Some(Value::Strings(list)) = self.values.get_mut(key) {
                        list.push(v.to_string());
                    }
                }
            }
        }
        Ok(self)
    }

    pub fn get_bool(&self, name: &str) -> bool {
        matches!(self.values.get(name), Some(Value::Bool(true)))
    }

    pub fn get_string(&self, name: &str) -> String {
        match self.values.get(name) {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        }
    }

    /// The value when the flag was given, `None` otherwise.
    pub fn opt_string(&self, name: &str) -> Option<String> {
        self.is_used(name).then(|| self.get_string(name))
    }

    /// A bool flag's value when given, `None` otherwise.
    pub fn opt_bool(&self, name: &str) -> Option<bool> {
        self.is_used(name).then(|| self.get_bool(name))
    }

    pub fn get_strings(&self, name: &str) -> Vec<String> {
        match self.values.get(name) {
            Some(Value::Strings(s)) => s.clone(),
            _ => Vec::new(),
        }
    }

    pub fn is_used(&self, name: &str) -> bool {
        self.used.contains(&name)
    }
}
