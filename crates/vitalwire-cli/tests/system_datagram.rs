//! System test, datagram mode: a `vitalwire host --udp` process and CLI devices it refuses.
//! A refused XX device learns it from an authenticated CLOSE UNAUTHORIZED and exits saying
//! so, instead of taking the silence for packet loss; a refused IK device keeps retrying
//! (a REJECT is not authenticated, spec §13.3) and reports the host's reason when it gives
//! up. Nothing from either reaches the telemetry.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn udp_host_refuses_unknown_devices_and_they_say_why() {
    let sb = Sandbox::new("datagram-refusal");
    sb.keygen("host");
    sb.keygen("pm1");
    sb.keygen("rogue");
    sb.trust_add("pm1", "PM-1");
    let host = HostProc::start(&sb, HostArgs { tcp: false, udp: true, ..HostArgs::default() });
    let addr = host.udp.unwrap();
    let good = start_device(&sb, &DeviceArgs { udp: true, ..DeviceArgs::new("pm1", "PM-1", addr) });
    let mut xx = start_device(
        &sb,
        &DeviceArgs { udp: true, profile: "xx", ..DeviceArgs::new("rogue", "ROGUE-XX", addr) },
    );
    // A REJECT is unauthenticated, so it never stops a device by itself: this one is bounded.
    let mut ik = start_device(
        &sb,
        &DeviceArgs {
            udp: true,
            extra: &["--max-attempts", "1"],
            ..DeviceArgs::new("rogue", "ROGUE-IK", addr)
        },
    );
    let status = xx.wait_exit(Duration::from_secs(20)).expect("the refused XX device exits");
    assert!(!status.success());
    assert!(xx.stderr().contains("unauthorized"), "{}", xx.stderr());
    // The IK device retries until its 15 s connection deadline, then reports the REJECT.
    let status = ik.wait_exit(Duration::from_secs(40)).expect("the refused IK device gives up");
    assert!(!status.success());
    assert!(ik.stderr().contains("unknown credential"), "{}", ik.stderr());
    let ok = wait_until(Duration::from_secs(20), || {
        host.telemetry().iter().filter(|v| v["device_id"] == "PM-1").count() >= 10
    });
    assert!(ok.is_some(), "host: {}\ndevice: {}", host.proc.stderr(), good.stderr());
    let telemetry = host.telemetry();
    assert!(telemetry.iter().all(|v| v["device_id"] == "PM-1"), "only the admitted device's data");
    let unknown = host.events_named("unknown_peer");
    assert!(unknown.iter().any(|e| e["device_id"] == "ROGUE-XX"), "{unknown:?}");
}
