import org.vitalwire.*

// A device and a host in one process: handshake (IK), one telemetry frame, close.
fun example(): String {
    val host = Keypair.generate()
    val device = Keypair.generate()
    val trust = TrustStore()
    trust.add(device.publicKey(), "PM-0001", "ICU bed 4")
    val dev = Connection.initiator(device, InitiatorOptions(
        profile = "ik", suite = "chachapoly", deviceId = "PM-0001", hostKey = host.publicKey(),
        pinnedHostKeys = listOf(), psk = null, pskId = null, pairing = false, model = "", firmware = "",
        maxFrameLen = 65535u, ephemeralForTestingOnly = null))
    val gw = Connection.responder(host, trust, ResponderOptions(
        maxFrameLen = 65535u, rekeyInterval = 1048576u, maxMessageLen = 4194304u, allowPairing = false,
        pskIds = listOf(), psks = listOf(), ephemeralForTestingOnly = null))
    gw.receive(dev.dataToSend())
    dev.receive(gw.dataToSend())
    val messages = gw.receive(dev.send(1u, "HR=72".toByteArray()))
    try {
        gw.receive(byteArrayOf(0, 0))
    } catch (e: VitalwireException.Decode) {
        // a zero-length frame: malformed input, typed
    }
    dev.close(); gw.close()
    return String(messages[0].payload)
}
