//! [`Report`]: the problems found, each naming the field it is about.

/// The problems found so far, each `"<field>: <what is wrong>"`.
#[derive(Debug, Default)]
pub struct Report(pub Vec<String>);

impl Report {
    /// Records that `field` is wrong.
    pub fn bad(&mut self, field: impl AsRef<str>, msg: impl AsRef<str>) {
        self.0.push(format!("{}: {}", field.as_ref(), msg.as_ref()));
    }

    /// Records that `field` is wrong unless `ok`.
    pub fn expect(&mut self, ok: bool, field: impl AsRef<str>, msg: impl AsRef<str>) {
        if !ok {
            self.bad(field, msg);
        }
    }
}
