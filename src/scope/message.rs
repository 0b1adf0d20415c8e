//! [`CancelMessage`]: the optional text a cancel carries.

use std::borrow::{Borrow, Cow};
use std::fmt;
use std::ops::Deref;
// Plain std `Arc`, also under loom: the text is immutable user data, not state
// the models need to interleave, and loom's `Arc` does not hold a `str`.
use std::sync::Arc;

/// Why a scope was cancelled, in words: the text given to
/// [`CancelScope::cancel_with`](crate::CancelScope::cancel_with), as Trio's
/// `cancel(reason=...)` and anyio's `cancel(reason=...)`.
///
/// Built from a `&'static str` without allocating, or from a `String` (or
/// `Box<str>`, `Arc<str>`, `Cow<'static, str>`) with at most one allocation,
/// made once when the message is created. Cloning never allocates (a copy of a
/// `&'static str`, or an `Arc` count increment), so one message can be handed
/// to every cancelled task's error. It reads as a `str` (`Deref`, `as_str`,
/// `Display`).
///
/// # Examples
///
/// ```
/// use cancel_scope::{CancelMessage, CancelScope};
///
/// let scope = CancelScope::new();
/// scope.cancel_with(format!("client {} went away", 42));
/// let msg: CancelMessage = scope.cancel_message().unwrap();
/// assert_eq!(msg, "client 42 went away");
/// assert!(msg.starts_with("client")); // derefs to `str`
/// ```
#[derive(Clone)]
pub struct CancelMessage(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static str),
    Shared(Arc<str>),
}

impl CancelMessage {
    /// A message from a `&'static str`; no allocation. Usable in `const`s.
    #[must_use]
    pub const fn from_static(msg: &'static str) -> Self {
        CancelMessage(Repr::Static(msg))
    }

    /// The text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(s) => s,
            Repr::Shared(s) => s,
        }
    }
}

impl Deref for CancelMessage {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for CancelMessage {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for CancelMessage {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&'static str> for CancelMessage {
    fn from(msg: &'static str) -> Self {
        CancelMessage::from_static(msg)
    }
}

impl From<String> for CancelMessage {
    fn from(msg: String) -> Self {
        CancelMessage(Repr::Shared(msg.into()))
    }
}

impl From<Box<str>> for CancelMessage {
    fn from(msg: Box<str>) -> Self {
        CancelMessage(Repr::Shared(msg.into()))
    }
}

impl From<Arc<str>> for CancelMessage {
    fn from(msg: Arc<str>) -> Self {
        CancelMessage(Repr::Shared(msg))
    }
}

impl From<Cow<'static, str>> for CancelMessage {
    fn from(msg: Cow<'static, str>) -> Self {
        match msg {
            Cow::Borrowed(s) => CancelMessage::from_static(s),
            Cow::Owned(s) => s.into(),
        }
    }
}

impl PartialEq for CancelMessage {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for CancelMessage {}

impl PartialEq<str> for CancelMessage {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for CancelMessage {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::hash::Hash for CancelMessage {
    // As `str`'s, which `Borrow<str>` requires.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for CancelMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for CancelMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_owned_compare_by_text() {
        let a = CancelMessage::from("bye");
        let b = CancelMessage::from(String::from("bye"));
        assert_eq!(a, b);
        assert_eq!(a, "bye");
        assert_eq!(b.clone().as_str(), "bye");
        assert_eq!(format!("{a} {b:?}"), "bye \"bye\"");
        assert_eq!(CancelMessage::from(Cow::Borrowed("x")), "x");
        assert_eq!(CancelMessage::from(Cow::Owned::<str>("y".into())), "y");
    }
}
