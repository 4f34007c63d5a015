//! Byte sizes as people type them on a command line: `512`, `16KiB`, `4GiB`, `1MB`.
//!
//! Binary units (`KiB`, `MiB`, `GiB`, `TiB`) are powers of 1024; decimal units (`KB`, `MB`,
//! `GB`, `TB`) are powers of 1000, as storage vendors mean them. Units are case-insensitive and
//! may follow a space; a bare number is bytes. One-letter units (`4G`) are refused because
//! tools disagree on whether they are binary (fio) or decimal, and fractions are refused
//! rather than rounded, so a size always means one exact byte count.

use std::fmt;

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("empty size")]
    Empty,
    #[error("{0:?} does not start with a whole number of units")]
    NoNumber(String),
    #[error("unknown unit {0:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)")]
    UnknownUnit(String),
    #[error("{0:?} is more bytes than fit in 64 bits")]
    Overflow(String),
}

/// The multiplier a unit suffix stands for, `None` when it is not one.
fn unit_multiplier(unit: &str) -> Option<u64> {
    let multiplier = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    Some(multiplier)
}

/// Parses a size such as `4GiB` or `512` into bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(SizeError::Empty);
    }
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::NoNumber(text.to_string()));
    }
    let multiplier =
        unit_multiplier(unit.trim_start()).ok_or_else(|| SizeError::UnknownUnit(unit.into()))?;
    // All-digit strings only fail to parse by overflowing.
    let number: u64 = digits
        .parse()
        .map_err(|_| SizeError::Overflow(text.to_string()))?;
    number
        .checked_mul(multiplier)
        .ok_or_else(|| SizeError::Overflow(text.to_string()))
}

/// A byte count shown in the largest binary unit that divides it evenly, for printing the
/// configuration back the way it was most likely typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (multiplier, name) in UNITS {
            if self.0 >= multiplier && self.0 % multiplier == 0 {
                return write!(f, "{}{name}", self.0 / multiplier);
            }
        }
        write!(f, "{}B", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_numbers_are_bytes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512B"), Ok(512));
    }

    #[test]
    fn binary_units_are_powers_of_1024() {
        assert_eq!(parse_size("16KiB"), Ok(16 * 1024));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
    }

    #[test]
    fn decimal_units_are_powers_of_1000() {
        assert_eq!(parse_size("4KB"), Ok(4_000));
        assert_eq!(parse_size("3MB"), Ok(3_000_000));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
    }

    #[test]
    fn units_ignore_case_and_may_follow_a_space() {
        assert_eq!(parse_size("16kib"), Ok(16 * 1024));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert_eq!(parse_size(" 8gb "), Ok(8_000_000_000));
    }

    #[test]
    fn refuses_what_is_not_a_size() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert!(matches!(parse_size("GiB"), Err(SizeError::NoNumber(_))));
        assert!(matches!(parse_size("-1"), Err(SizeError::NoNumber(_))));
        assert!(matches!(
            parse_size("1.5GiB"),
            Err(SizeError::UnknownUnit(_))
        ));
        assert!(matches!(parse_size("4G"), Err(SizeError::UnknownUnit(_))));
        assert!(matches!(
            parse_size("4 GiBs"),
            Err(SizeError::UnknownUnit(_))
        ));
    }

    #[test]
    fn refuses_overflow() {
        assert!(matches!(
            parse_size("16385PiB"),
            Err(SizeError::UnknownUnit(_))
        ));
        assert!(matches!(
            parse_size("16777216TiB"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("99999999999999999999999"),
            Err(SizeError::Overflow(_))
        ));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        assert_eq!(Size(4 << 30).to_string(), "4GiB");
        assert_eq!(Size(16 << 10).to_string(), "16KiB");
        assert_eq!(Size(1_000_000).to_string(), "1000000B");
        assert_eq!(Size(1536).to_string(), "1536B");
        assert_eq!(Size(0).to_string(), "0B");
    }
}
