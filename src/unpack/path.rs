//! Entry names, checked before anything touches the disk.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Why an entry name cannot be placed inside the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NameProblem {
    Absolute,
    DotDot,
}

impl NameProblem {
    pub(super) fn reason(self) -> &'static str {
        match self {
            NameProblem::Absolute => "is an absolute path",
            NameProblem::DotDot => "escapes the layer (..)",
        }
    }
}

/// The components of a relative entry name, without empty and `.` components (`./a//b/` is
/// `a`, `b`). Empty for the layer's root itself.
pub(super) fn components(name: &[u8]) -> Result<Vec<&OsStr>, NameProblem> {
    if name.first() == Some(&b'/') {
        return Err(NameProblem::Absolute);
    }
    let mut components = Vec::new();
    for component in name.split(|&byte| byte == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err(NameProblem::DotDot),
            _ => components.push(OsStr::from_bytes(component)),
        }
    }
    Ok(components)
}

/// Components joined with `/`, for messages and the owners list.
pub(super) fn display(components: &[&OsStr]) -> String {
    let bytes: Vec<&[u8]> = components.iter().map(|c| c.as_bytes()).collect();
    String::from_utf8_lossy(&bytes.join(&b'/')).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(name: &str) -> Result<Vec<&str>, NameProblem> {
        components(name.as_bytes()).map(|c| c.iter().map(|c| c.to_str().unwrap()).collect())
    }

    #[test]
    fn relative_names_are_split_and_cleaned() {
        assert_eq!(strs("./usr/bin/").unwrap(), ["usr", "bin"]);
        assert_eq!(strs("a//b/./c").unwrap(), ["a", "b", "c"]);
        assert_eq!(strs("./").unwrap(), Vec::<&str>::new());
        assert_eq!(strs("..a/b..").unwrap(), ["..a", "b.."]);
    }

    #[test]
    fn escaping_names_are_refused() {
        assert_eq!(strs("/etc/passwd"), Err(NameProblem::Absolute));
        assert_eq!(strs("../etc/passwd"), Err(NameProblem::DotDot));
        assert_eq!(strs("a/../../b"), Err(NameProblem::DotDot));
        assert_eq!(strs("a/.."), Err(NameProblem::DotDot));
    }

    #[test]
    fn display_joins_components() {
        assert_eq!(display(&components(b"./a/b/c").unwrap()), "a/b/c");
    }
}
