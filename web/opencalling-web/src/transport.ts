// The page's two ways to the server (docs/protocol.md): WebTransport on the
// server's QUIC port (a session at /opencalling, one bidirectional stream
// for signaling, datagrams for audio) and, where that is unavailable or
// blocked, a WebSocket to the fallback listener (binary messages: 0x00 and
// signaling bytes, 0x01 and one datagram). `connect` races them as the
// native SDK does: WebTransport first, the WebSocket after a head start.

import { CallingError, ErrorCode } from "./errors.js";

/** Where the server is, as a page reaches it. */
export interface ServerAddress {
  /** `https://host:port/opencalling`: the server's QUIC port. */
  webTransportUrl?: string;
  /**
   * Hex SHA-256 hashes of a development server's browser certificates (its
   * `server.json`'s `browser_certificate_hashes`); none for a server with a
   * certificate from a CA.
   */
  certificateHashes?: string[];
  /** `wss://host:port/opencalling`: the fallback listener. */
  webSocketUrl?: string;
}

/** What a transport tells its owner. */
export interface TransportHandlers {
  onBytes(bytes: Uint8Array): void;
  onDatagram(datagram: Uint8Array): void;
  /** The connection is over: the server's code (an ErrorCode number) and text, when it said. */
  onClose(code: number | null, reason: string): void;
}

/** One open connection to the server. */
export interface Transport {
  readonly kind: "webtransport" | "websocket";
  /** The largest datagram the connection carries. */
  readonly maxDatagramSize: number;
  sendBytes(bytes: Uint8Array): void;
  sendDatagram(datagram: Uint8Array): void;
  close(): void;
}

/** How long the WebSocket waits for WebTransport before it starts too. */
export const WEBSOCKET_HEAD_START_MS = 300;

/** How long a connection may take before the server counts as unreachable. */
export const CONNECT_TIMEOUT_MS = 10000;

function hexBytes(hex: string): Uint8Array<ArrayBuffer> {
  if (!/^([0-9a-fA-F]{2}){32}$/.test(hex)) throw new CallingError(ErrorCode.INVALID_PARAMETER, `not a SHA-256 hash in hex: ${hex}`);
  return Uint8Array.from(hex.match(/../g)!.map((pair) => parseInt(pair, 16)));
}

async function openWebTransport(address: ServerAddress, handlers: TransportHandlers, abort: AbortSignal): Promise<Transport> {
  const url = address.webTransportUrl!;
  const options: WebTransportOptions = {};
  if (address.certificateHashes !== undefined && address.certificateHashes.length > 0) {
    options.serverCertificateHashes = address.certificateHashes.map((hex) => ({ algorithm: "sha-256", value: hexBytes(hex) }));
  }
  const session = new WebTransport(url, options);
  abort.addEventListener("abort", () => session.close());
  await session.ready;
  const stream = await session.createBidirectionalStream();
  const writer = stream.writable.getWriter();
  const datagrams = session.datagrams.writable.getWriter();
  let open = true;
  const transport: Transport = {
    kind: "webtransport",
    maxDatagramSize: session.datagrams.maxDatagramSize,
    sendBytes(bytes) {
      if (open) writer.write(bytes).catch(() => undefined);
    },
    sendDatagram(datagram) {
      if (open) datagrams.write(datagram).catch(() => undefined);
    },
    close() {
      if (!open) return;
      open = false;
      session.close();
    },
  };
  void (async () => {
    const reader = stream.readable.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        handlers.onBytes(value);
      }
    } catch {
      // The session's close says why.
    }
  })();
  void (async () => {
    const reader = session.datagrams.readable.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        handlers.onDatagram(value);
      }
    } catch {
      // As above.
    }
  })();
  session.closed.then(
    (info) => {
      open = false;
      handlers.onClose(info.closeCode === undefined ? null : info.closeCode, info.reason ?? "");
    },
    (error: unknown) => {
      open = false;
      handlers.onClose(null, String(error));
    },
  );
  return transport;
}

async function openWebSocket(address: ServerAddress, handlers: TransportHandlers, abort: AbortSignal): Promise<Transport> {
  const socket = new WebSocket(address.webSocketUrl!);
  socket.binaryType = "arraybuffer";
  abort.addEventListener("abort", () => socket.close());
  await new Promise<void>((resolve, reject) => {
    socket.onopen = () => resolve();
    socket.onerror = () => reject(new Error("the WebSocket did not open"));
    socket.onclose = () => reject(new Error("the WebSocket closed while opening"));
  });
  let open = true;
  socket.onmessage = (event: MessageEvent) => {
    if (!(event.data instanceof ArrayBuffer) || event.data.byteLength === 0) {
      socket.close(4004, "4004 a text or empty message");
      return;
    }
    const message = new Uint8Array(event.data);
    if (message[0] === 0) handlers.onBytes(message.subarray(1));
    else if (message[0] === 1) handlers.onDatagram(message.subarray(1));
    else socket.close(4004, "4004 an unknown message kind");
  };
  socket.onerror = () => undefined;
  socket.onclose = (event: CloseEvent) => {
    open = false;
    // The reason starts with the full code: "4003 server shutting down".
    const full = /^(\d+) (.*)$/.exec(event.reason);
    if (full !== null) handlers.onClose(Number(full[1]), full[2]!);
    else handlers.onClose(event.code === 1000 ? 0 : null, event.reason);
  };
  const send = (kind: number, bytes: Uint8Array) => {
    if (!open || socket.readyState !== WebSocket.OPEN) return;
    const message = new Uint8Array(bytes.length + 1);
    message[0] = kind;
    message.set(bytes, 1);
    socket.send(message);
  };
  return {
    kind: "websocket",
    maxDatagramSize: 1200,
    sendBytes: (bytes) => send(0, bytes),
    sendDatagram: (datagram) => send(1, datagram),
    close() {
      open = false;
      socket.close(1000);
    },
  };
}

/**
 * Opens a connection: WebTransport first (where the page has it and an
 * address is given), the WebSocket after WEBSOCKET_HEAD_START_MS (or at
 * once when WebTransport failed sooner); the first to open wins and the
 * other is closed. Rejects with SERVER_UNREACHABLE when neither opens
 * within CONNECT_TIMEOUT_MS.
 */
export async function connect(address: ServerAddress, handlers: TransportHandlers): Promise<Transport> {
  const useWebTransport = address.webTransportUrl !== undefined && typeof WebTransport !== "undefined";
  const useWebSocket = address.webSocketUrl !== undefined;
  if (!useWebTransport && !useWebSocket) {
    throw new CallingError(ErrorCode.INVALID_PARAMETER, "no way to the server: give a webTransportUrl (in a page with WebTransport) or a webSocketUrl");
  }
  const failures: string[] = [];
  const aborts: AbortController[] = [];
  let winner: Transport | null = null;
  // Each attempt's handlers forward only once it won.
  const attempt = (open: typeof openWebTransport) => {
    const abort = new AbortController();
    aborts.push(abort);
    let mine: Transport | null = null;
    const forward: TransportHandlers = {
      onBytes: (bytes) => mine === winner && mine !== null && handlers.onBytes(bytes),
      onDatagram: (datagram) => mine === winner && mine !== null && handlers.onDatagram(datagram),
      onClose: (code, reason) => {
        if (mine === winner && mine !== null) handlers.onClose(code, reason);
      },
    };
    return open(address, forward, abort.signal).then((transport) => {
      mine = transport;
      return transport;
    });
  };
  return new Promise<Transport>((resolve, reject) => {
    let pending = 0;
    let settled = false;
    const timeout = setTimeout(() => finish(null), CONNECT_TIMEOUT_MS);
    const finish = (transport: Transport | null) => {
      if (settled) {
        transport?.close();
        return;
      }
      settled = true;
      clearTimeout(timeout);
      clearTimeout(headStart);
      if (transport !== null) {
        winner = transport;
        resolve(transport);
        return;
      }
      for (const abort of aborts) abort.abort();
      reject(new CallingError(ErrorCode.SERVER_UNREACHABLE, `the server did not answer: ${failures.join("; ") || "timed out"}`));
    };
    const start = (name: string, open: typeof openWebTransport) => {
      pending += 1;
      attempt(open).then(finish, (error: unknown) => {
        failures.push(`${name}: ${error instanceof Error ? error.message : String(error)}`);
        pending -= 1;
        if (pending > 0) return;
        // WebTransport failed before its head start was over: the
        // WebSocket need not wait; with nothing left to try, give up.
        if (startWebSocket !== null) startWebSocket();
        else finish(null);
      });
    };
    let startWebSocket: (() => void) | null = useWebSocket
      ? () => {
          if (startWebSocket === null || settled) return;
          startWebSocket = null;
          start("WebSocket", openWebSocket);
        }
      : null;
    const headStart = setTimeout(() => startWebSocket?.(), useWebTransport ? WEBSOCKET_HEAD_START_MS : 0);
    if (useWebTransport) start("WebTransport", openWebTransport);
  });
}
