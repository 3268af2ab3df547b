//! A fixed-capacity list of actions, filled by the pure state machines ([`crate::relay`],
//! [`crate::conn`]) and carried out by their driver, without allocation.

/// Up to `N` actions of type `T`, in the order they were pushed.
#[derive(Debug, Clone, Copy)]
pub struct ActionList<T: Copy, const N: usize> {
    items: [Option<T>; N],
    len: usize,
}

impl<T: Copy, const N: usize> Default for ActionList<T, N> {
    fn default() -> Self {
        ActionList {
            items: [None; N],
            len: 0,
        }
    }
}

impl<T: Copy + std::fmt::Debug, const N: usize> ActionList<T, N> {
    /// The most actions the list holds: a machine's bound on what one event may ask for.
    pub const CAPACITY: usize = N;

    /// Appends `a`. A machine never emits more than `N` actions per event (its tests check
    /// the bound); losing one would leak what it releases, so overflowing stops the thread
    /// instead of dropping it silently.
    pub(crate) fn push(&mut self, a: T) {
        assert!(self.len < N, "action list overflow at {N}: {a:?}");
        self.items[self.len] = Some(a);
        self.len += 1;
    }

    /// Removes every action.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The actions, in the order they must be carried out.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.items[..self.len].iter().flatten().copied()
    }

    /// Number of actions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
