//! Reads a Kubernetes quantity (`1Gi`, `500M`, `1e9`, `1073741824`) as a whole number of bytes,
//! rounding fractions of a byte up. Only what a size in bytes needs: no negative values.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The largest value a Kubernetes quantity can hold.
const MAX_BYTES: u128 = i64::MAX as u128;

/// The number of bytes `quantity` stands for, or `None` when it is not a well-formed,
/// non-negative quantity within Kubernetes' range (up to 2^63-1).
pub fn quantity_bytes(quantity: &Quantity) -> Option<u64> {
    parse_bytes(quantity.0.trim())
}

fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.strip_prefix('+').unwrap_or(text);
    let number_len = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if whole.len() > 30 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Digits beyond the 18th decimal place can only change the rounding up.
    let (fraction, truncated) = match fraction.split_at_checked(18) {
        Some((kept, dropped)) => (kept, dropped.bytes().any(|b| b != b'0')),
        None => (fraction, false),
    };
    let digits = format!("{whole}{fraction}");
    let significant = digits.trim_start_matches('0');
    let mantissa: u128 = if significant.is_empty() { 0 } else { significant.parse().ok()? };
    let mut decimal_places = fraction.len() as i32;
    let mut multiplier: u128 = 1;
    match suffix {
        "" => {}
        "Ki" => multiplier = 1 << 10,
        "Mi" => multiplier = 1 << 20,
        "Gi" => multiplier = 1 << 30,
        "Ti" => multiplier = 1 << 40,
        "Pi" => multiplier = 1 << 50,
        "Ei" => multiplier = 1 << 60,
        "m" => decimal_places += 3,
        "k" => decimal_places -= 3,
        "M" => decimal_places -= 6,
        "G" => decimal_places -= 9,
        "T" => decimal_places -= 12,
        "P" => decimal_places -= 15,
        "E" => decimal_places -= 18,
        exponent if exponent.starts_with(['e', 'E']) => {
            let power: i32 = exponent[1..].parse().ok()?;
            if !(-40..=40).contains(&power) {
                return None;
            }
            decimal_places -= power;
        }
        _ => return None,
    }
    let scaled = mantissa.checked_mul(multiplier)?;
    let bytes = if decimal_places >= 0 {
        let divisor = 10u128.checked_pow(decimal_places as u32)?;
        let rounded_up = scaled.div_ceil(divisor);
        if truncated && scaled % divisor == 0 { rounded_up + 1 } else { rounded_up }
    } else {
        scaled.checked_mul(10u128.checked_pow(decimal_places.unsigned_abs())?)?
    };
    (bytes <= MAX_BYTES).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(text: &str) -> Option<u64> {
        quantity_bytes(&Quantity(text.to_owned()))
    }

    #[test]
    fn binary_and_decimal_suffixes_scale_to_bytes() {
        assert_eq!(bytes("1Gi"), Some(1 << 30));
        assert_eq!(bytes("512Mi"), Some(512 << 20));
        assert_eq!(bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(bytes("1073741824"), Some(1 << 30));
        assert_eq!(bytes("100M"), Some(100_000_000));
        assert_eq!(bytes("2k"), Some(2000));
        assert_eq!(bytes("1e9"), Some(1_000_000_000));
        assert_eq!(bytes("+4Ki"), Some(4096));
        assert_eq!(bytes(".5Ki"), Some(512));
        assert_eq!(bytes("0"), Some(0));
    }

    #[test]
    fn fractions_of_a_byte_round_up() {
        assert_eq!(bytes("1500m"), Some(2));
        assert_eq!(bytes("0.1"), Some(1));
        assert_eq!(bytes("1e-3"), Some(1));
    }

    #[test]
    fn malformed_negative_and_huge_quantities_are_refused() {
        for text in ["", "Gi", "-1Gi", "1GB", "1 Gi", "1.2.3", "abc", "1e", "9Ei", "1e40", "."] {
            assert_eq!(bytes(text), None, "{text:?}");
        }
        assert_eq!(bytes("7Ei"), Some(7 << 60));
    }
}
