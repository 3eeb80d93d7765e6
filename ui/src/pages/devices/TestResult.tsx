// What "test connection" read: each tag's value and quality, or why it failed.
import type { DeviceTestOut } from "../../api/types";
import { fmtValue, qualityClass } from "../../components/format";

export default function TestResult({ result }: { result: DeviceTestOut | string }) {
  if (typeof result === "string") return <p className="error" role="alert">Test failed: {result}</p>;
  const good = result.values.filter((v) => v.quality === "good").length;
  return (
    <div className="card" data-testid="test-result">
      <p>
        Read {result.values.length} tags in {result.elapsed_ms.toFixed(0)} ms: {good} good.
      </p>
      <div className="table-wrap">
        <table>
          <thead><tr><th>Tag</th><th>Raw</th><th>Value</th><th>Quality</th></tr></thead>
          <tbody>
            {result.values.map((v) => (
              <tr key={v.tag}><td>{v.tag}</td><td>{fmtValue(v.raw)}</td><td>{fmtValue(v.value)} {v.unit}</td><td><span className={`badge ${qualityClass(v.quality)}`}>{v.quality}</span></td></tr>
            ))}
          </tbody>
        </table>
      </div>
    </div>
  );
}
