import Foundation

// A device and a host in one process: handshake (IK), one telemetry frame.
func example() throws -> String {
    let host = try Keypair.generate()
    let device = try Keypair.generate()
    let trust = TrustStore()
    try trust.add(publicKey: device.publicKey(), deviceId: "PM-0001", label: "ICU bed 4")
    let dev = try Connection.initiator(keypair: device, options: InitiatorOptions(
        profile: "ik", suite: "chachapoly", deviceId: "PM-0001", hostKey: host.publicKey(),
        pinnedHostKeys: [], psk: nil, pskId: nil, pairing: false, model: "", firmware: "",
        maxFrameLen: 65535, ephemeralForTestingOnly: nil))
    let gw = try Connection.responder(keypair: host, trust: trust, options: ResponderOptions(
        maxFrameLen: 65535, rekeyInterval: 1048576, maxMessageLen: 4194304, allowPairing: false,
        pskIds: [], psks: [], ephemeralForTestingOnly: nil))
    _ = try gw.receive(data: dev.dataToSend())
    _ = try dev.receive(data: gw.dataToSend())
    let messages = try gw.receive(data: dev.send(channel: 1, payload: Data("HR=72".utf8)))
    do {
        _ = try gw.receive(data: Data([0, 0]))
    } catch VitalwireError.Decode(let reason) {
        _ = reason // a zero-length frame: malformed input, typed
    }
    return String(decoding: messages[0].payload, as: UTF8.self)
}
