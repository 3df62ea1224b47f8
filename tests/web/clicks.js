// The click probe of the latency benchmark (tests/examples/bench/web.rs),
// as the native one (audio-device's probe): a 2 ms burst of 1 kHz at 0.8
// every 250 ms, said by a microphone of the page's own making, each
// stamped in wall-clock ms when it is rendered (when the stream the SDK
// captures gets it); and a detector on what the SDK plays, stamping each
// click heard (above 0.25 after 100 ms of quiet) when the playout worklet
// renders it (where the native probe stamps it: handed to the device) and
// when the browser says it leaves the speaker (its output latency later).

/** Wall-clock ms at which `contextTime` leaves the context's output. */
function wallClock(context, contextTime) {
  const stamp = context.getOutputTimestamp();
  if (stamp.contextTime === undefined || stamp.performanceTime === undefined || stamp.performanceTime === 0) {
    return performance.timeOrigin + performance.now() + (contextTime - context.currentTime) * 1000;
  }
  return performance.timeOrigin + stamp.performanceTime + (contextTime - stamp.contextTime) * 1000;
}

/** Wall-clock ms at which `contextTime` is rendered: its output latency earlier. */
function renderClock(context, contextTime) {
  return wallClock(context, contextTime) - 1000 * ((context.baseLatency ?? 0) + (context.outputLatency ?? 0));
}

export const clicks = { said: [], heard: [], heardAtSpeaker: [] };

export async function clickMicrophone(seconds) {
  const context = new AudioContext({ sampleRate: 48000 });
  await context.resume();
  const destination = context.createMediaStreamDestination();
  const burst = context.createBuffer(1, 96, 48000);
  const samples = burst.getChannelData(0);
  for (let index = 0; index < 96; index += 1) samples[index] = 0.8 * Math.sin((2 * Math.PI * index) / 48);
  const start = context.currentTime + 0.5;
  for (let click = 0; click < seconds * 4; click += 1) {
    const at = start + click * 0.25;
    const source = context.createBufferSource();
    source.buffer = burst;
    source.connect(destination);
    source.start(at);
    source.onended = () => source.disconnect();
  }
  // Stamped once the clock mapping is settled (the context runs by then).
  setTimeout(() => {
    for (let click = 0; click < seconds * 4; click += 1) clicks.said.push(renderClock(context, start + click * 0.25));
  }, 200);
  return destination.stream;
}

const detectorSource = `
class ClickDetector extends AudioWorkletProcessor {
  constructor() { super(); this.quiet = 1e9; }
  process(inputs) {
    const samples = inputs[0] && inputs[0][0];
    if (!samples) return true;
    for (let index = 0; index < samples.length; index += 1) {
      if (Math.abs(samples[index]) <= 0.25) { this.quiet += 1; continue; }
      if (this.quiet > 4800) this.port.postMessage(currentTime + index / sampleRate);
      this.quiet = 0;
    }
    return true;
  }
}
registerProcessor("click-detector", ClickDetector);
`;

export async function detectClicks(output) {
  const context = output.context;
  const url = URL.createObjectURL(new Blob([detectorSource], { type: "text/javascript" }));
  await context.audioWorklet.addModule(url);
  const detector = new AudioWorkletNode(context, "click-detector", { numberOfOutputs: 1, outputChannelCount: [1] });
  detector.port.onmessage = (event) => {
    clicks.heard.push(renderClock(context, event.data));
    clicks.heardAtSpeaker.push(wallClock(context, event.data));
  };
  const silent = context.createGain();
  silent.gain.value = 0;
  output.connect(detector);
  detector.connect(silent).connect(context.destination);
}
