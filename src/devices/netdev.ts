/**
 * The contract between a network device (virtio-net) and what its cable plugs into (src/net: a
 * virtual switch port, user-mode NAT, TAP). The device layer defines it so that devices never
 * depend on the network layer.
 */
export interface NetBackend {
  /**
   * A frame the guest transmitted: a whole Ethernet frame (destination MAC first), no virtio header,
   * no FCS. The backend must copy what it keeps: the buffer is reused after the call returns.
   */
  send(frame: Uint8Array): void;
  /**
   * Connects the receive direction: the backend calls `deliver` with each frame for the guest
   * (same framing; the device copies it, so the caller may reuse the buffer). `deliver` returns
   * false when the guest had no room and the frame was dropped.
   */
  attach(deliver: (frame: Uint8Array) => boolean): void;
  close(): void;
}
