pub struct Plan;
impl Plan {
    pub fn random(_seed: u64, _d: std::time::Duration) -> Plan { Plan }
    pub fn every_fault_once() -> Plan { Plan }
}
