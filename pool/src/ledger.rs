//! The pool's books: a budget of host memory and, for every VM registered, what it holds (its
//! boot RAM and plugged DIMMs) and what it has reserved for hot-adds under way. Every change
//! is checked against the budget here, under one lock in the caller, so two VMs racing for
//! the last bytes cannot both get them: the pool never promises more than its budget.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;
pub use tidal_api::pool::Registration;

const MIB: u64 = 1 << 20;

/// Tidal's memory block: a VM shrinks by whole blocks.
pub const BLOCK: u64 = 128 * MIB;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LedgerError {
    #[error(
        "the pool has {free} MiB free of its budget of {budget} MiB; {vm} asks for {asked} MiB",
        free = .free / MIB, budget = .budget / MIB, asked = .asked / MIB
    )]
    Short {
        vm: String,
        asked: u64,
        free: u64,
        budget: u64,
    },
    #[error(
        "{vm} would hold {would} MiB, above its max of {max} MiB",
        would = .would / MIB, max = .max / MIB
    )]
    AboveMax { vm: String, would: u64, max: u64 },
    #[error("no VM {0} in the pool")]
    Unknown(String),
    #[error("{vm} has {has} MiB {what}, not the {asked} MiB given back", has = .has / MIB, asked = .asked / MIB)]
    Underflow {
        vm: String,
        what: &'static str,
        has: u64,
        asked: u64,
    },
    #[error(
        "a budget of {budget} MiB is below the {held} MiB the VMs hold",
        budget = .budget / MIB, held = .held / MIB
    )]
    BudgetBelowHeld { budget: u64, held: u64 },
    #[error("{vm}: min {min} MiB is above max {max} MiB", min = .min / MIB, max = .max / MIB)]
    Bounds { vm: String, min: u64, max: u64 },
    #[error(
        "{vm} would keep {would} MiB, below its min of {min} MiB",
        would = .would / MIB, min = .min / MIB
    )]
    BelowMin { vm: String, would: u64, min: u64 },
    #[error("{0} is already in a move")]
    Moving(String),
    #[error(
        "{vm} needs {short} MiB more than the pool has free, and VMs of lower priority can give \
         only {can} MiB above their min; nobody was shrunk",
        short = .short / MIB, can = .can / MIB
    )]
    NoDonors { vm: String, short: u64, can: u64 },
    #[error("a move needs two VMs and a size above 0")]
    BadMove,
}

/// A registered VM's standing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub registration: Registration,
    /// DIMMs plugged since registration count here too (bytes).
    pub plugged: u64,
    /// Hot-adds under way: taken from the budget, not yet plugged.
    pub reserved: u64,
    /// When its process started (clock ticks after the host's boot): a pid reused by another
    /// process is not the VM.
    pub started: u64,
    /// Budget set aside for this VM's hot-adds alone: what a move's donor has given back so far.
    #[serde(default)]
    pub promised: u64,
    /// The move this VM is the donor of: what it releases goes to the receiver's promise.
    #[serde(default)]
    pub giving: Option<Giving>,
}

/// A donor's side of a move under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Giving {
    pub to: String,
    /// Of the move's size, what the donor has yet to give back, and what it already has.
    pub left: u64,
    pub given: u64,
    /// What the donor releases beyond the move's size, to be set aside for its own hot-add
    /// that plugs it back (its DIMMs do not add up to the size): yet to come, and come.
    #[serde(default)]
    pub keep: u64,
    #[serde(default)]
    pub kept: u64,
}

impl Member {
    /// What the VM has: its boot RAM, its DIMMs and its hot-adds under way.
    pub fn has(&self) -> u64 {
        self.registration.boot + self.plugged + self.reserved
    }

    /// What the VM holds of the budget: what it has and what is promised to it.
    pub fn held(&self) -> u64 {
        self.has() + self.promised
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    budget: u64,
    members: BTreeMap<String, Member>,
}

impl Ledger {
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            members: BTreeMap::new(),
        }
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Makes the budget `budget`, which must hold what the VMs hold now.
    pub fn set_budget(&mut self, budget: u64) -> Result<(), LedgerError> {
        if budget < self.held() {
            return Err(LedgerError::BudgetBelowHeld {
                budget,
                held: self.held(),
            });
        }
        self.budget = budget;
        Ok(())
    }

    /// What every VM holds together.
    pub fn held(&self) -> u64 {
        self.members.values().map(Member::held).sum()
    }

    pub fn free(&self) -> u64 {
        self.budget.saturating_sub(self.held())
    }

    pub fn members(&self) -> impl Iterator<Item = (&String, &Member)> {
        self.members.iter()
    }

    pub fn member(&self, name: &str) -> Result<&Member, LedgerError> {
        self.members
            .get(name)
            .ok_or_else(|| LedgerError::Unknown(name.to_owned()))
    }

    /// Counts a VM's boot RAM and plugged DIMMs; a VM registering again (its Tidal restarted
    /// the registration, or the pool reconciles) replaces what it held before.
    pub fn register(
        &mut self,
        registration: Registration,
        started: u64,
    ) -> Result<(), LedgerError> {
        let name = registration.name.clone();
        if registration.min > registration.max {
            return Err(LedgerError::Bounds {
                vm: name,
                min: registration.min,
                max: registration.max,
            });
        }
        let asked = registration.boot + registration.plugged;
        if asked > registration.max {
            return Err(LedgerError::AboveMax {
                vm: name,
                would: asked,
                max: registration.max,
            });
        }
        let before = self.members.get(&name).map_or(0, Member::held);
        let free = self.free() + before;
        if asked > free {
            return Err(self.short(&name, asked, free));
        }
        let plugged = registration.plugged;
        self.members.insert(
            name,
            Member {
                registration,
                plugged,
                reserved: 0,
                started,
                promised: 0,
                giving: None,
            },
        );
        Ok(())
    }

    /// Forgets VM `name`, and everything it held goes back to the budget.
    pub fn unregister(&mut self, name: &str) -> Result<Member, LedgerError> {
        self.members
            .remove(name)
            .ok_or_else(|| LedgerError::Unknown(name.to_owned()))
    }

    /// Takes `size` bytes for a hot-add of VM `name`: first from what is promised to it, then
    /// from what a move it is giving in has passed on (a donor taking back), then from the free
    /// budget; or refuses with what is free. The VM's max bounds it too.
    pub fn reserve(&mut self, name: &str, size: u64) -> Result<(), LedgerError> {
        let free = self.free();
        let budget = self.budget;
        let member = self.member(name)?;
        let would = member.has() + size;
        if would > member.registration.max {
            return Err(LedgerError::AboveMax {
                vm: name.to_owned(),
                would,
                max: member.registration.max,
            });
        }
        let promised = member.promised.min(size);
        let taken_back = match &member.giving {
            Some(giving) => giving
                .given
                .min(size - promised)
                .min(self.member(&giving.to).map_or(0, |to| to.promised)),
            None => 0,
        };
        let from_free = size - promised - taken_back;
        if from_free > free {
            return Err(LedgerError::Short {
                vm: name.to_owned(),
                asked: size,
                free,
                budget,
            });
        }
        if let Some(giving) = self.member_mut(name)?.giving.as_mut() {
            giving.given -= taken_back;
            giving.left += taken_back;
            let to = giving.to.clone();
            self.member_mut(&to)?.promised -= taken_back;
        }
        let member = self.member_mut(name)?;
        member.promised -= promised;
        member.reserved += size;
        Ok(())
    }

    /// The hot-add of `size` bytes that VM `name` reserved is plugged.
    pub fn commit(&mut self, name: &str, size: u64) -> Result<(), LedgerError> {
        let member = self.member_mut(name)?;
        take(&mut member.reserved, size, name, "reserved")?;
        member.plugged += size;
        Ok(())
    }

    /// The hot-add of `size` bytes that VM `name` reserved did not happen.
    pub fn cancel(&mut self, name: &str, size: u64) -> Result<(), LedgerError> {
        let member = self.member_mut(name)?;
        take(&mut member.reserved, size, name, "reserved")
    }

    /// VM `name` gave `size` bytes of DIMMs back, and the host has them: free, or promised to
    /// the receiver of a move it is giving in.
    pub fn release(&mut self, name: &str, size: u64) -> Result<(), LedgerError> {
        let member = self.member_mut(name)?;
        take(&mut member.plugged, size, name, "plugged")?;
        let Some(giving) = member.giving.as_mut() else {
            return Ok(());
        };
        let passed = giving.left.min(size);
        giving.left -= passed;
        giving.given += passed;
        let kept = giving.keep.min(size - passed);
        giving.keep -= kept;
        giving.kept += kept;
        let to = giving.to.clone();
        member.promised += kept;
        match self.members.get_mut(&to) {
            Some(receiver) => receiver.promised += passed,
            None => self.member_mut(name)?.giving = None,
        }
        Ok(())
    }

    /// Starts a move of `size` bytes from VM `from` to VM `to`: both must be in the pool and in
    /// no other move, `from` must keep its min and `to` stay within its max. `keep` more bytes
    /// that `from` releases are set aside for it alone, for the hot-add that plugs them back:
    /// a donor whose DIMMs do not add up to `size` gives whole DIMMs and takes the excess back.
    pub fn start_move(
        &mut self,
        from: &str,
        to: &str,
        size: u64,
        keep: u64,
    ) -> Result<(), LedgerError> {
        if from == to || size == 0 {
            return Err(LedgerError::BadMove);
        }
        let (donor, receiver) = (self.member(from)?, self.member(to)?);
        for (name, member) in [(from, donor), (to, receiver)] {
            if member.giving.is_some() || member.promised > 0 || self.giving_to(name) {
                return Err(LedgerError::Moving(name.to_owned()));
            }
        }
        if donor.plugged < size + keep {
            return Err(LedgerError::Underflow {
                vm: from.to_owned(),
                what: "plugged",
                has: donor.plugged,
                asked: size + keep,
            });
        }
        let would = donor.has() - size;
        if would < donor.registration.min {
            return Err(LedgerError::BelowMin {
                vm: from.to_owned(),
                would,
                min: donor.registration.min,
            });
        }
        let would = receiver.has() + size;
        if would > receiver.registration.max {
            return Err(LedgerError::AboveMax {
                vm: to.to_owned(),
                would,
                max: receiver.registration.max,
            });
        }
        self.member_mut(from)?.giving = Some(Giving {
            to: to.to_owned(),
            left: size,
            given: 0,
            keep,
            kept: 0,
        });
        Ok(())
    }

    /// What VM `from` has released in its move so far, passed on and kept (0 when it is in
    /// none).
    pub fn given(&self, from: &str) -> u64 {
        self.member(from)
            .ok()
            .and_then(|m| m.giving.as_ref())
            .map_or(0, |g| g.given + g.kept)
    }

    /// Turns VM `from`'s move around: what its receiver was promised is promised back to it,
    /// for the hot-add that undoes its shrink.
    pub fn reverse_move(&mut self, from: &str) -> Result<(), LedgerError> {
        let Some(giving) = self.member_mut(from)?.giving.take() else {
            return Ok(());
        };
        let promised = self
            .members
            .get_mut(&giving.to)
            .map_or(0, |to| std::mem::take(&mut to.promised));
        self.member_mut(from)?.promised += promised;
        Ok(())
    }

    /// Ends VM `from`'s move, whichever way it went: what is still promised to either VM goes
    /// back to the free budget.
    pub fn end_move(&mut self, from: &str, to: &str) {
        for name in [from, to] {
            if let Some(member) = self.members.get_mut(name) {
                member.giving = None;
                member.promised = 0;
            }
        }
    }

    /// Makes VM `name`'s DIMMs what its Tidal says it has (`ram`, its guest RAM now), with no
    /// hot-add under way: the VMs are the truth after the pool was down. Returns what the
    /// ledger had and has now (boot RAM and DIMMs).
    pub fn reconcile(&mut self, name: &str, ram: u64) -> Result<(u64, u64), LedgerError> {
        let member = self.member_mut(name)?;
        let had = member.has();
        member.plugged = ram.saturating_sub(member.registration.boot);
        member.reserved = 0;
        Ok((had, member.has()))
    }

    /// Ends every move (a restarted pool has none under way).
    pub fn end_moves(&mut self) {
        for member in self.members.values_mut() {
            member.giving = None;
            member.promised = 0;
        }
    }

    /// Who gives what so that VM `name` can take `short` bytes more than is free: VMs of lower
    /// priority than it, above their min, lowest priority first and, of equal priority, the
    /// cheapest (least `cost`, the memory a guest would migrate) first, each giving whole
    /// blocks of its DIMMs. Refused, with what they could give, when they cannot give enough.
    pub fn donors_for(
        &self,
        name: &str,
        short: u64,
        cost: impl Fn(&Member) -> u64,
    ) -> Result<Vec<(String, u64)>, LedgerError> {
        let priority = self.member(name)?.registration.priority;
        let mut candidates: Vec<(&String, &Member)> = self
            .members
            .iter()
            .filter(|(_, m)| m.registration.priority < priority && m.giving.is_none())
            .collect();
        candidates.sort_by_key(|(_, m)| (m.registration.priority, cost(m)));
        let mut left = short;
        let mut donors = Vec::new();
        for (donor, member) in candidates {
            let spare = member.has().saturating_sub(member.registration.min);
            let can = spare.min(member.plugged) / BLOCK * BLOCK;
            let gives = can.min(left.div_ceil(BLOCK) * BLOCK);
            if gives > 0 {
                donors.push((donor.clone(), gives));
                left = left.saturating_sub(gives);
            }
            if left == 0 {
                return Ok(donors);
            }
        }
        Err(LedgerError::NoDonors {
            vm: name.to_owned(),
            short,
            can: short - left,
        })
    }

    fn giving_to(&self, name: &str) -> bool {
        self.members
            .values()
            .any(|m| m.giving.as_ref().is_some_and(|g| g.to == name))
    }

    fn member_mut(&mut self, name: &str) -> Result<&mut Member, LedgerError> {
        self.members
            .get_mut(name)
            .ok_or_else(|| LedgerError::Unknown(name.to_owned()))
    }

    fn short(&self, name: &str, asked: u64, free: u64) -> LedgerError {
        LedgerError::Short {
            vm: name.to_owned(),
            asked,
            free,
            budget: self.budget,
        }
    }
}

/// Takes `size` from `from`, which must hold it.
fn take(from: &mut u64, size: u64, vm: &str, what: &'static str) -> Result<(), LedgerError> {
    *from = from.checked_sub(size).ok_or(LedgerError::Underflow {
        vm: vm.to_owned(),
        what,
        has: *from,
        asked: size,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const GIB: u64 = 1 << 30;

    fn vm(name: &str, boot: u64, max: u64) -> Registration {
        Registration {
            name: name.to_owned(),
            socket: format!("/run/{name}.sock").into(),
            pid: 1,
            min: boot,
            max,
            priority: 0,
            boot,
            plugged: 0,
        }
    }

    #[test]
    fn the_last_gib_goes_to_one_vm_and_the_other_learns_what_is_free() {
        let mut ledger = Ledger::new(4 * GIB);
        ledger.register(vm("a", GIB, 4 * GIB), 0).expect("a fits");
        ledger.register(vm("b", GIB, 4 * GIB), 0).expect("b fits");
        ledger.reserve("a", GIB).expect("a gets a GiB");
        ledger.reserve("b", GIB / 2).expect("b gets half");
        let refused = ledger
            .reserve("a", GIB)
            .expect_err("only half a GiB is left");
        assert_eq!(
            refused.to_string(),
            "the pool has 512 MiB free of its budget of 4096 MiB; a asks for 1024 MiB"
        );
        ledger.commit("a", GIB).expect("a's hot-add landed");
        ledger.cancel("b", GIB / 2).expect("b's did not");
        assert_eq!(ledger.free(), GIB);
        ledger.release("a", GIB).expect("a gave it back");
        assert_eq!(ledger.free(), 2 * GIB);
        ledger.unregister("b").expect("b ended");
        assert_eq!(ledger.free(), 3 * GIB);
    }

    #[test]
    fn a_vm_that_does_not_fit_is_not_registered_and_max_bounds_a_vm() {
        let mut ledger = Ledger::new(2 * GIB);
        ledger.register(vm("a", GIB, 2 * GIB), 0).expect("a fits");
        let refused = ledger
            .register(vm("b", 2 * GIB, 2 * GIB), 0)
            .expect_err("too big");
        assert!(matches!(refused, LedgerError::Short { .. }), "{refused}");
        assert!(ledger.member("b").is_err());
        assert_eq!(
            ledger
                .reserve("a", 2 * GIB)
                .expect_err("above max")
                .to_string(),
            "a would hold 3072 MiB, above its max of 2048 MiB"
        );
        // Registering again replaces what the VM held.
        ledger
            .register(
                Registration {
                    plugged: GIB,
                    ..vm("a", GIB, 2 * GIB)
                },
                0,
            )
            .expect("a again, with a DIMM");
        assert_eq!(ledger.free(), 0);
        assert!(ledger.release("a", 2 * GIB).is_err());
        assert!(ledger.commit("a", 1).is_err());
    }

    /// A ledger of VMs `names` with 1 GiB of boot RAM each (max 3 GiB), its budget spent by
    /// a's DIMM of 1 GiB.
    fn spent_by_a(names: &[&str]) -> Ledger {
        let count = u64::try_from(names.len()).expect("a few VMs");
        let mut ledger = Ledger::new((count + 1) * GIB);
        for name in names {
            ledger.register(vm(name, GIB, 3 * GIB), 0).expect("fits");
        }
        ledger
            .reserve("a", GIB)
            .and_then(|()| ledger.commit("a", GIB))
            .expect("a grows");
        assert_eq!(ledger.free(), 0);
        ledger
    }

    #[test]
    fn a_move_passes_what_the_donor_gives_back_to_the_receiver_alone() {
        let mut ledger = spent_by_a(&["a", "b", "c"]);
        assert_eq!(ledger.free(), 0);
        assert_eq!(
            ledger
                .start_move("a", "b", 2 * GIB, 0)
                .expect_err("a has one DIMM")
                .to_string(),
            "a has 1024 MiB plugged, not the 2048 MiB given back"
        );
        ledger.start_move("a", "b", GIB, 0).expect("a move");
        assert_eq!(
            ledger
                .start_move("c", "b", GIB, 0)
                .expect_err("b is in a move"),
            LedgerError::Moving("b".to_owned())
        );
        ledger.release("a", GIB).expect("a's DIMM is back");
        assert_eq!((ledger.given("a"), ledger.free()), (GIB, 0));
        assert!(matches!(
            ledger.reserve("c", GIB),
            Err(LedgerError::Short { .. })
        ));
        ledger
            .reserve("b", GIB)
            .and_then(|()| ledger.commit("b", GIB))
            .expect("b grows");
        ledger.end_move("a", "b");
        assert_eq!(ledger.member("b").expect("b").plugged, GIB);
        assert_eq!(ledger.free(), 0);
    }

    #[test]
    fn a_reversed_move_promises_the_memory_back_to_its_donor() {
        let mut ledger = spent_by_a(&["a", "b"]);
        assert_eq!(
            ledger
                .start_move("a", "b", GIB, 0)
                .map(|()| ledger.end_move("a", "b")),
            Ok(())
        );
        assert!(matches!(
            ledger.start_move("b", "a", GIB, 0),
            Err(LedgerError::Underflow { .. })
        ));
        ledger.start_move("a", "b", GIB, 0).expect("a move");
        ledger.release("a", GIB).expect("a's DIMM is back");
        ledger.reverse_move("a").expect("b could not take it");
        ledger
            .reserve("a", GIB)
            .and_then(|()| ledger.commit("a", GIB))
            .expect("a regrows");
        ledger.end_move("a", "b");
        assert_eq!(ledger.free(), 0);
        assert_eq!(ledger.member("a").expect("a").plugged, GIB);
    }

    #[test]
    fn a_donor_taking_back_during_its_move_takes_what_it_passed_on() {
        let mut ledger = spent_by_a(&["a", "b"]);
        ledger.start_move("a", "b", GIB, 0).expect("a move");
        ledger.release("a", GIB).expect("a's DIMM is back");
        // A shrink rolled back re-adds what it removed.
        ledger.reserve("a", GIB).expect("a takes its GiB back");
        assert_eq!(
            (ledger.given("a"), ledger.member("b").expect("b").promised),
            (0, 0)
        );
        assert!(ledger.held() <= ledger.budget());
    }

    /// Half of a's one DIMM moves in a spent pool: a gives the whole DIMM, the receiver is
    /// promised half and a the other half, for the DIMM that plugs it back; nobody else can
    /// take either.
    #[test]
    fn a_donor_giving_a_whole_dimm_keeps_the_excess_for_itself() {
        let mut ledger = spent_by_a(&["a", "b", "c"]);
        assert!(matches!(
            ledger.start_move("a", "b", GIB / 2, GIB),
            Err(LedgerError::Underflow { .. })
        ));
        ledger
            .start_move("a", "b", GIB / 2, GIB / 2)
            .expect("a move");
        ledger.release("a", GIB).expect("a's DIMM is back");
        let promised = |ledger: &Ledger, name| ledger.member(name).expect("a VM").promised;
        assert_eq!(ledger.given("a"), GIB);
        assert_eq!(
            (promised(&ledger, "a"), promised(&ledger, "b")),
            (GIB / 2, GIB / 2)
        );
        assert_eq!(ledger.free(), 0);
        assert!(matches!(
            ledger.reserve("c", GIB / 2),
            Err(LedgerError::Short { .. })
        ));
        for name in ["b", "a"] {
            ledger
                .reserve(name, GIB / 2)
                .and_then(|()| ledger.commit(name, GIB / 2))
                .expect("each takes its half");
        }
        ledger.end_move("a", "b");
        let plugged = |name| ledger.member(name).expect("a VM").plugged;
        assert_eq!((plugged("a"), plugged("b")), (GIB / 2, GIB / 2));
        assert_eq!(ledger.free(), 0);
    }

    #[test]
    fn donors_are_the_lowest_priority_then_the_cheapest_above_their_min() {
        let mut ledger = Ledger::new(8 * GIB);
        for (name, priority, plugged) in [
            ("lo", 0, GIB),
            ("lo2", 0, GIB),
            ("mid", 1, GIB),
            ("hi", 2, 0),
        ] {
            let registration = Registration {
                priority,
                plugged,
                ..vm(name, GIB, 4 * GIB)
            };
            ledger.register(registration, 0).expect("fits");
        }
        // lo2 is the cheaper of the two lowest.
        let cost = |m: &Member| u64::from(m.registration.name != "lo2");
        let plan = |short| ledger.donors_for("hi", short, cost);
        assert_eq!(plan(GIB / 2), Ok(vec![("lo2".to_owned(), GIB / 2)]));
        assert_eq!(
            plan(GIB + 100 * MIB),
            Ok(vec![("lo2".to_owned(), GIB), ("lo".to_owned(), BLOCK)])
        );
        assert_eq!(
            plan(3 * GIB).map(|d| d.len()),
            Ok(3),
            "mid, of lower priority than hi, gives last"
        );
        assert_eq!(
            plan(3 * GIB + 1)
                .expect_err("hi asks for more than all can give")
                .to_string(),
            "hi needs 3072 MiB more than the pool has free, and VMs of lower priority can give \
             only 3072 MiB above their min; nobody was shrunk"
        );
        assert!(
            matches!(
                ledger.donors_for("lo", BLOCK, cost),
                Err(LedgerError::NoDonors { can: 0, .. })
            ),
            "nobody is below the lowest priority"
        );
    }

    #[derive(Debug, Clone)]
    enum Step {
        Reserve(usize, u64),
        Commit(usize, u64),
        Cancel(usize, u64),
        Release(usize, u64),
        Unregister(usize),
        Register(usize, u64),
        StartMove(usize, usize, u64, u64),
        ReverseMove(usize),
        EndMove(usize, usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        let vm = 0..3usize;
        let size = (0..8u64).prop_map(|n| n * 256 * MIB);
        prop_oneof![
            (vm.clone(), size.clone()).prop_map(|(v, s)| Step::Reserve(v, s)),
            (vm.clone(), size.clone()).prop_map(|(v, s)| Step::Commit(v, s)),
            (vm.clone(), size.clone()).prop_map(|(v, s)| Step::Cancel(v, s)),
            (vm.clone(), size.clone()).prop_map(|(v, s)| Step::Release(v, s)),
            vm.clone().prop_map(Step::Unregister),
            (vm.clone(), size.clone()).prop_map(|(v, s)| Step::Register(v, s)),
            (vm.clone(), vm.clone(), size.clone(), size).prop_map(|(f, t, s, k)| Step::StartMove(
                f,
                t,
                s,
                k / 2
            )),
            vm.clone().prop_map(Step::ReverseMove),
            (vm.clone(), vm).prop_map(|(f, t)| Step::EndMove(f, t)),
        ]
    }

    proptest! {
        /// Whatever VMs ask and moves do, in whatever order, the pool never holds more than its
        /// budget, and a refused step changes nothing.
        #[test]
        fn the_budget_is_never_overcommitted(steps in prop::collection::vec(step(), 1..60)) {
            let names = ["a", "b", "c"];
            let mut ledger = Ledger::new(3 * GIB);
            for step in steps {
                let before = ledger.clone();
                let result = match step {
                    Step::Reserve(v, s) => ledger.reserve(names[v], s),
                    Step::Commit(v, s) => ledger.commit(names[v], s),
                    Step::Cancel(v, s) => ledger.cancel(names[v], s),
                    Step::Release(v, s) => ledger.release(names[v], s),
                    Step::Unregister(v) => ledger.unregister(names[v]).map(drop),
                    Step::Register(v, boot) => ledger.register(vm(names[v], boot, 2 * GIB), 0),
                    Step::StartMove(f, t, s, k) => ledger.start_move(names[f], names[t], s, k),
                    Step::ReverseMove(v) => ledger.reverse_move(names[v]),
                    Step::EndMove(f, t) => {
                        ledger.end_move(names[f], names[t]);
                        Ok(())
                    }
                };
                prop_assert!(ledger.held() <= ledger.budget());
                if result.is_err() {
                    prop_assert_eq!(&ledger, &before);
                }
            }
        }
    }
}
