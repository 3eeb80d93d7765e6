// Queries and live state several pages share.
import { useEffect, useRef, useState } from "react";
import { useQuery } from "@tanstack/react-query";
import { api, idList } from "./client";
import { qualityName } from "../components/format";
import { live, useChannel } from "./live";
import type { DeviceStats, FlowOut, HistTag, LatestValue, LiveValue } from "./types";

export function useFlows() {
  return useQuery({ queryKey: ["flows"], queryFn: () => api<FlowOut[]>("/api/v1/flows") });
}

/** Every tag the historian knows (id, device, name, unit, UNS path); refetched while `waiting`. */
export function useHistTags(waiting = false) {
  return useQuery({
    queryKey: ["hist-tags"],
    queryFn: () => api<HistTag[]>("/api/v1/historian/tags?limit=10000"),
    refetchInterval: waiting ? 3000 : false,
  });
}

export interface Health extends DeviceStats {
  /** When this page last saw the poll count grow without a failure (client clock). */
  lastGood?: number;
}

/** Per-device poll statistics of a flow, live from the `devices:{flow}` channel. */
export function useDeviceHealth(flow: string | null): Record<string, Health> {
  const [health, setHealth] = useState<Record<string, Health>>({});
  useEffect(() => setHealth({}), [flow]);
  useChannel<{ devices: Record<string, DeviceStats> }>(flow ? `devices:${flow}` : null, (data) => {
    setHealth((before) => {
      const next = { ...before };
      for (const [id, stats] of Object.entries(data.devices ?? {})) {
        const prev = before[id];
        const good = (stats.polls ?? 0) > (prev?.polls ?? -1) && (stats.failures ?? 0) === (prev?.failures ?? stats.failures ?? 0);
        next[id] = { ...prev, ...stats, lastGood: good && stats.breaker !== "open" ? Date.now() : prev?.lastGood };
      }
      return next;
    });
  });
  return health;
}

/** Live values of the given tag ids: the stored latest first, then the WebSocket's (re-rendered at most per frame). */
export function useLiveValues(ids: string[]): Map<string, LiveValue> {
  const values = useRef(new Map<string, LiveValue>());
  const [, setTick] = useState(0);
  const frame = useRef<number | null>(null);
  const key = ids.join(",");

  useEffect(() => {
    if (!ids.length) return;
    const bump = () => {
      frame.current ??= requestAnimationFrame(() => {
        frame.current = null;
        setTick((t) => t + 1);
      });
    };
    const missing = ids.filter((id) => !values.current.has(id));
    let cancelled = false;
    if (missing.length) {
      api<LatestValue[]>("/api/v1/historian/latest", { method: "POST", body: `{"tags": ${idList(missing)}}` })
        .then((rows) => {
          if (cancelled) return;
          for (const r of rows) if (!values.current.has(r.tag_id)) values.current.set(r.tag_id, { tag_id: r.tag_id, value: r.value, quality: qualityName(r.quality), timestamp: r.time ?? undefined });
          bump();
        })
        .catch(() => undefined);
    }
    const stops = ids.map((id) =>
      live.listen(`values:${id}`, (e) => {
        values.current.set(id, e.data as unknown as LiveValue);
        bump();
      }),
    );
    return () => {
      cancelled = true;
      stops.forEach((stop) => stop());
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [key]);
  return values.current;
}
