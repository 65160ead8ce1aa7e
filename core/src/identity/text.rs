//! Borrowing string fields on the request path. serde borrows a field only when its type
//! is exactly `Cow<'a, str>`; these adapters make `Option<Cow<'a, str>>` and
//! `Vec<Cow<'a, str>>` borrow too, so decoding a review copies only escaped strings.
//! And [`clip`], for quoting what a request says in a one-line message.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};

#[derive(Deserialize)]
pub(crate) struct Borrowed<'a>(#[serde(borrow)] pub(crate) Cow<'a, str>);

pub fn option<'de: 'a, 'a, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    Ok(Option::<Borrowed<'a>>::deserialize(deserializer)?.map(|b| b.0))
}

pub fn option_list<'de: 'a, 'a, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<Cow<'a, str>>>, D::Error> {
    Ok(Option::<Vec<Borrowed<'a>>>::deserialize(deserializer)?
        .map(|list| list.into_iter().map(|b| b.0).collect()))
}

/// Cuts `text` to at most `max` characters on a character boundary, marking the cut,
/// on one line: values quoted in messages come from the request.
pub fn clip(text: &str, max: usize) -> String {
    let one_line = text.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut clipped: String = one_line.chars().take(max.saturating_sub(1)).collect();
    clipped.push('…');
    clipped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(borrow, deserialize_with = "option", default)]
        text: Option<Cow<'a, str>>,
        #[serde(borrow, deserialize_with = "option_list", default)]
        list: Option<Vec<Cow<'a, str>>>,
    }

    #[test]
    fn plain_strings_are_borrowed_and_escaped_ones_owned() {
        let probe: Probe<'_> =
            serde_json::from_str(r#"{"text": "worker-1", "list": ["a", "b\"c"]}"#).unwrap();
        assert!(matches!(probe.text, Some(Cow::Borrowed("worker-1"))));
        let list = probe.list.unwrap();
        assert!(matches!(list[0], Cow::Borrowed("a")));
        assert!(matches!(&list[1], Cow::Owned(s) if s == "b\"c"));
        let empty: Probe<'_> = serde_json::from_str(r#"{"text": null}"#).unwrap();
        assert!(empty.text.is_none() && empty.list.is_none());
    }
}
