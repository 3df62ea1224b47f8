// opencalling-web: the calling component's API for web pages, talking to
// an OpenCalling server over WebTransport (or a WebSocket where
// WebTransport is unavailable). See README.md.

export { TRTCCalling, type CallingListener, type CallingOptions } from "./calling.js";
export { CallingError, ErrorCode, describeError } from "./errors.js";
export { CallEngine, type CallingEvent, type UserVolume } from "./engine.js";
export { JitterBuffer, type Pull, type JitterStats } from "./jitter.js";
export type { ServerAddress } from "./transport.js";
export type { AudioStats, VoiceProcessing } from "./audio.js";
export type { KeyProblem } from "./e2ee.js";
export * as wire from "./wire.js";
