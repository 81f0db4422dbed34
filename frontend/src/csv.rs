//! Comma-separated records as buildx and BuildKit read their specs
//! (`--mount=...`, `--output`, `--secret`, `--cache-to`, `--attest`): Go's
//! `encoding/csv`, so a field with a comma is quoted whole
//! (`"src=a,b"`) and `""` is a quote inside one.

/// Splits one CSV record as Go's encoding/csv does (quotes, `""`).
pub fn fields(s: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    loop {
        let mut field = String::new();
        if chars.get(i) == Some(&'"') {
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(format!(
                            "parse error on line 1, column {}: extraneous or missing \" in quoted-field",
                            i + 1
                        ));
                    }
                    Some('"') if chars.get(i + 1) == Some(&'"') => {
                        field.push('"');
                        i += 2;
                    }
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some(&c) => {
                        field.push(c);
                        i += 1;
                    }
                }
            }
            match chars.get(i) {
                None | Some(',') => {}
                Some(_) => {
                    return Err(format!(
                        "parse error on line 1, column {}: extraneous or missing \" in quoted-field",
                        i + 1
                    ));
                }
            }
        } else {
            while let Some(&c) = chars.get(i) {
                if c == ',' {
                    break;
                }
                if c == '"' {
                    return Err(format!(
                        "parse error on line 1, column {}: bare \" in non-quoted-field",
                        i + 1
                    ));
                }
                field.push(c);
                i += 1;
            }
        }
        fields.push(field);
        if chars.get(i) == Some(&',') {
            i += 1;
            continue;
        }
        return Ok(fields);
    }
}

/// The fields of a record as `(key, value)`, split at the first `=`; a
/// field without one has no value.
pub fn pairs(s: &str) -> Result<Vec<(String, Option<String>)>, String> {
    Ok(fields(s)?
        .into_iter()
        .map(|f| match f.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (f, None),
        })
        .collect())
}

/// The fields of a record as `(key, value)`, each field `KEY=VALUE`; a
/// field without `=` is an error naming it.
pub fn key_values(s: &str) -> Result<Vec<(String, String)>, String> {
    pairs(s)?
        .into_iter()
        .map(|(k, v)| {
            v.map(|v| (k.clone(), v))
                .ok_or(format!("{k:?} is not KEY=VALUE"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_as_go() {
        assert!(fields("a=\"x,y\",b").is_err());
        assert_eq!(fields("\"a=x,y\",b").unwrap(), vec!["a=x,y", "b"]);
        assert_eq!(fields("\"say \"\"hi\"\"\"").unwrap(), vec!["say \"hi\""]);
        assert!(fields("\"a").is_err());
        assert_eq!(
            pairs("type=local,\"dest=a,b\",tar").unwrap(),
            vec![
                ("type".into(), Some("local".into())),
                ("dest".into(), Some("a,b".into())),
                ("tar".into(), None)
            ]
        );
        assert_eq!(
            key_values("a=1,b=").unwrap(),
            vec![("a".into(), "1".into()), ("b".into(), String::new())]
        );
        assert_eq!(
            key_values("a=1,tar").unwrap_err(),
            "\"tar\" is not KEY=VALUE"
        );
    }
}
