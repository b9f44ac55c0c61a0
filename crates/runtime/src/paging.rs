//! List RPCs page as Google's AIP-158 describes: the request's `page_size` (0: a default;
//! over the maximum: the maximum; negative: refused) and `page_token` (empty: the first
//! page; else exactly the `next_page_token` of the previous answer), the answer's
//! `next_page_token` (empty on the last page). Items are listed in the order of a string
//! key; a token is the key of the last item of its page, so a page after an insertion or a
//! removal neither repeats nor skips what stayed.

/// Every item of a list RPC, as a client pages through it: `fetch(page_token)` answers one
/// page and the next page's token (empty after the last).
pub async fn all_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, tonic::Status>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let (mut all, mut token) = (Vec::new(), String::new());
    loop {
        let (items, next) = fetch(token).await?;
        all.extend(items);
        if next.is_empty() {
            return Ok(all);
        }
        token = next;
    }
}

/// Items per page when the request does not say.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Most items per page, whatever the request says.
pub const MAX_PAGE_SIZE: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("page_size must not be negative, got {0}")]
    NegativeSize(i32),
    #[error("page_token {0:?} is not a next_page_token of this list")]
    BadToken(String),
}

/// One page asked for: its size, and the key it starts after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub size: usize,
    pub after: Option<String>,
}

impl PageRequest {
    pub fn parse(page_size: i32, page_token: &str) -> Result<PageRequest, PageError> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => return Err(PageError::NegativeSize(n)),
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        let after = match page_token {
            "" => None,
            token => Some(
                hex::decode(token)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| PageError::BadToken(token.to_owned()))?,
            ),
        };
        Ok(PageRequest { size, after })
    }

    /// The key range from this page on, for a `BTreeMap` or `BTreeSet` keyed in list order
    /// (`range::<str, _>(page.rest())`): the page starts there without a scan.
    pub fn rest(&self) -> (std::ops::Bound<&str>, std::ops::Bound<&str>) {
        use std::ops::Bound;
        (
            self.after.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
            Bound::Unbounded,
        )
    }

    /// Whether an item keyed `key` comes after the previous page.
    pub fn wants(&self, key: &str) -> bool {
        self.after.as_deref().is_none_or(|after| key > after)
    }

    /// The page from `items`, which come in key order, those of earlier pages already
    /// skipped (see [`PageRequest::wants`]): at most `size` of them, and the token of the
    /// next page (empty when nothing follows).
    pub fn take<T>(&self, items: impl IntoIterator<Item = T>, key: impl Fn(&T) -> String) -> (Vec<T>, String) {
        let mut items = items.into_iter();
        let page: Vec<T> = items.by_ref().take(self.size).collect();
        let next = match (page.last(), items.next()) {
            (Some(last), Some(_)) => token(&key(last)),
            _ => String::new(),
        };
        (page, next)
    }
}

/// The token of the page after the item keyed `key`.
pub fn token(key: &str) -> String {
    hex::encode(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("k{i:04}")).collect()
    }

    #[test]
    fn pages_cover_every_item_once_in_order() {
        let all = keys(250);
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let request = PageRequest::parse(100, &token).unwrap();
            let (page, next) = request.take(all.iter().filter(|k| request.wants(k)), |k| k.to_string());
            assert!(page.len() <= 100);
            seen.extend(page.into_iter().cloned());
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(seen, all);
    }

    #[test]
    fn sizes_default_cap_and_refuse_negatives() {
        assert_eq!(PageRequest::parse(0, "").unwrap().size, DEFAULT_PAGE_SIZE);
        assert_eq!(PageRequest::parse(5000, "").unwrap().size, MAX_PAGE_SIZE);
        assert_eq!(PageRequest::parse(-1, ""), Err(PageError::NegativeSize(-1)));
        assert!(matches!(PageRequest::parse(10, "zz"), Err(PageError::BadToken(_))));
        assert!(matches!(PageRequest::parse(10, "abc"), Err(PageError::BadToken(_))));
        let exact = keys(3);
        let request = PageRequest::parse(3, "").unwrap();
        let (page, next) = request.take(exact.iter(), |k| k.to_string());
        assert_eq!((page.len(), next.as_str()), (3, ""), "no token when nothing follows");
    }

    #[test]
    fn a_removed_item_does_not_shift_the_next_page() {
        let mut all = keys(10);
        let request = PageRequest::parse(4, "").unwrap();
        let (_, next) = request.take(all.iter(), |k| k.to_string());
        all.remove(1);
        let request = PageRequest::parse(4, &next).unwrap();
        let (page, _) = request.take(all.iter().filter(|k| request.wants(k)), |k| k.to_string());
        assert_eq!(page.first().map(|k| k.as_str()), Some("k0004"));
    }
}
