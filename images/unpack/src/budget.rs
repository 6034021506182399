//! A bound on the metadata the `tar` crate reads into memory.
//!
//! While looking for the next entry, `tar::Entries` reads GNU long name
//! and long link records and PAX headers whole into a `Vec`, with no
//! limit: a hostile archive could declare a 100 GiB long name. This reader
//! sits under the archive and lets the caller set, before each step of the
//! iterator, the stream position that step may not pass: the end of the
//! previous entry's data plus [`crate::Limits::max_header_size`] and a few
//! blocks. While the caller reads an entry's data the bound is lifted (file
//! sizes are checked against their own limits). Hand-written because the
//! `tar` crate has no such knob.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

use crate::error::{Error, Result};

/// Position and bound, shared between the reader (inside the archive) and
/// the loop that drives the archive.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    pos: Cell<u64>,
    limit: Cell<Option<u64>>,
    max_header: u64,
}

impl Budget {
    pub(crate) fn new(max_header: u64) -> Rc<Budget> {
        Rc::new(Budget {
            pos: Cell::new(0),
            limit: Cell::new(None),
            max_header,
        })
    }

    /// Before asking for the next entry: the next header starts at
    /// `next_header` (bytes from the start of the archive); the metadata
    /// in front of the entry may take `max_header` bytes, plus the header
    /// blocks themselves (entry, long name, long link, PAX) and their
    /// padding.
    pub(crate) fn expect_header_at(&self, next_header: u64) {
        let slack = 8 * 512;
        self.limit.set(Some(
            next_header
                .saturating_add(self.max_header)
                .saturating_add(slack),
        ));
    }

    /// While an entry's data is read.
    pub(crate) fn lift(&self) {
        self.limit.set(None);
    }
}

/// The reader under the archive.
pub(crate) struct BudgetReader<R> {
    inner: R,
    budget: Rc<Budget>,
}

impl<R: Read> BudgetReader<R> {
    pub(crate) fn new(inner: R, budget: Rc<Budget>) -> Self {
        BudgetReader { inner, budget }
    }
}

impl<R: Read> Read for BudgetReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let pos = self.budget.pos.get();
        let want = match self.budget.limit.get() {
            None => buf.len(),
            Some(limit) => {
                let left = limit.saturating_sub(pos);
                if left == 0 && !buf.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "the metadata records (long names, PAX headers) of the next entry \
                             are over the limit of {} bytes",
                            self.budget.max_header
                        ),
                    ));
                }
                buf.len().min(usize::try_from(left).unwrap_or(usize::MAX))
            }
        };
        let n = self.inner.read(&mut buf[..want])?;
        self.budget.pos.set(pos + n as u64);
        Ok(n)
    }
}

/// Drives `input` as a tar archive under a header budget of `max_header`
/// bytes: `each` handles one entry and returns its display name and its
/// stored data size (for the next header's position). Returns the last
/// entry's name (for errors), if there was one. The one loop of the
/// unpacker and the sanitizer, so both bound headers alike.
pub(crate) fn for_each_entry<R: Read>(
    input: R,
    max_header: u64,
    mut each: impl FnMut(&mut tar::Entry<'_, BudgetReader<R>>) -> Result<(String, u64)>,
) -> Result<Option<String>> {
    let budget = Budget::new(max_header);
    let mut archive = tar::Archive::new(BudgetReader::new(input, budget.clone()));
    let entries = archive.entries().map_err(|source| Error::Archive {
        after: None,
        source,
    })?;
    let mut last: Option<String> = None;
    budget.expect_header_at(0);
    for entry in entries {
        let mut entry = entry.map_err(|source| Error::Archive {
            after: last.clone(),
            source,
        })?;
        budget.lift();
        let start = entry.raw_file_position();
        let (name, stored) = each(&mut entry)?;
        budget.expect_header_at(start.saturating_add(stored.saturating_add(511) & !511));
        last = Some(name);
    }
    budget.lift();
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_applies_only_while_set() {
        let data = vec![1u8; 10_000];
        let b = Budget::new(100);
        let mut r = BudgetReader::new(&data[..], b.clone());
        b.expect_header_at(0);
        let mut sink = Vec::new();
        let e = r.read_to_end(&mut sink).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(sink.len(), 100 + 8 * 512);
        b.lift();
        r.read_to_end(&mut sink).unwrap();
        assert_eq!(sink.len(), 10_000);
    }
}
