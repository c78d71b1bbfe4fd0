//! The pool key: what a pooled connection was opened with.

/// What a pooled connection was opened with: the login user and the startup parameters
/// (database included, in the order sent). Every session holds its key for its whole life, idle
/// ones too, so it is one allocation: the user, then each name and value after its length
/// (`8:database3:app`), which no two different keys share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    text: Box<str>,
    user_len: usize,
}

impl PoolKey {
    /// The key of a login as `user` with startup parameters `params`.
    pub fn new<K: AsRef<str>, V: AsRef<str>>(user: &str, params: impl IntoIterator<Item = (K, V)>) -> Self {
        use std::fmt::Write as _;
        let mut text = String::from(user);
        for (k, v) in params {
            let (k, v) = (k.as_ref(), v.as_ref());
            let _ = write!(text, "{}:{k}{}:{v}", k.len(), v.len());
        }
        Self { text: text.into_boxed_str(), user_len: user.len() }
    }

    /// The login user.
    pub fn user(&self) -> &str {
        self.text.get(..self.user_len).unwrap_or_default()
    }

    /// The startup parameters, in the order given.
    pub fn params(&self) -> Params<'_> {
        Params { rest: self.text.get(self.user_len..).unwrap_or_default() }
    }
}

/// The startup parameters of a [`PoolKey`]: `(name, value)` pairs.
#[derive(Debug, Clone)]
pub struct Params<'a> {
    rest: &'a str,
}

impl<'a> Params<'a> {
    fn field(&mut self) -> Option<&'a str> {
        let (len, rest) = self.rest.split_once(':')?;
        let len: usize = len.parse().ok()?;
        let field = rest.get(..len)?;
        self.rest = rest.get(len..)?;
        Some(field)
    }
}

impl<'a> Iterator for Params<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        Some((self.field()?, self.field()?))
    }
}
