// One WebSocket per tab to /api/v1/ws, shared by every component: channels are reference-counted
// (subscribed while anyone listens), re-subscribed after a reconnect (with backoff). Each connection
// is opened with a one-use ticket (POST /api/v1/auth/ws-ticket through the API client, which renews
// an expired session first), so a socket is never tried with credentials the API would refuse — and
// only while someone is logged in.
import { useEffect, useRef, useState } from "react";
import { api, parseJson } from "./client";

export interface LiveEvent<T = Record<string, unknown>> {
  channel: string;
  data: T;
}

type Listener = (event: LiveEvent) => void;

class LiveSocket {
  private socket: WebSocket | null = null;
  private listeners = new Map<string, Set<Listener>>();
  private statusListeners = new Set<(open: boolean) => void>();
  private retry = 0;
  private timer: number | null = null;
  private keepOpen = false;
  private opening = false;
  open = false;

  listen(channel: string, fn: Listener): () => void {
    let set = this.listeners.get(channel);
    if (!set) {
      set = new Set();
      this.listeners.set(channel, set);
      this.send({ subscribe: [channel] });
    }
    set.add(fn);
    this.ensure();
    return () => {
      const current = this.listeners.get(channel);
      if (!current) return;
      current.delete(fn);
      if (current.size === 0) {
        this.listeners.delete(channel);
        this.send({ unsubscribe: [channel] });
      }
    };
  }

  /** Open the socket (the header's live badge keeps it open, so every page shows whether it is live). */
  connect(): void {
    this.keepOpen = true;
    this.ensure();
  }

  /** Logged out: close the socket and stop reconnecting. */
  disconnect(): void {
    this.keepOpen = false;
    if (this.timer !== null) window.clearTimeout(this.timer);
    this.timer = null;
    this.socket?.close();
  }

  private wanted(): boolean {
    return this.keepOpen || this.listeners.size > 0;
  }

  private retryLater(): void {
    if (!this.wanted() || this.timer !== null) return;
    const delay = Math.min(10_000, 500 * 2 ** this.retry++);
    this.timer = window.setTimeout(() => {
      this.timer = null;
      this.ensure();
    }, delay);
  }

  onStatus(fn: (open: boolean) => void): () => void {
    this.statusListeners.add(fn);
    return () => this.statusListeners.delete(fn);
  }

  private send(message: object): void {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }

  private setOpen(open: boolean): void {
    this.open = open;
    this.statusListeners.forEach((fn) => fn(open));
  }

  private ensure(): void {
    if (this.socket || this.timer !== null || this.opening || !this.wanted()) return;
    this.opening = true;
    api<{ ticket: string }>("/api/v1/auth/ws-ticket", { method: "POST", noRedirect: true })
      .then(({ ticket }) => {
        this.opening = false;
        if (this.wanted()) this.openWith(ticket);
      })
      .catch(() => {
        this.opening = false;
        this.retryLater();
      });
  }

  private openWith(ticket: string): void {
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${window.location.host}/api/v1/ws?ticket=${encodeURIComponent(ticket)}`);
    this.socket = socket;
    socket.onopen = () => {
      this.retry = 0;
      this.setOpen(true);
      const channels = [...this.listeners.keys()];
      if (channels.length) this.send({ subscribe: channels });
    };
    socket.onmessage = (msg) => {
      let parsed: unknown;
      try {
        parsed = parseJson(String(msg.data));
      } catch {
        return;
      }
      const event = parsed as Partial<LiveEvent>;
      if (typeof event.channel !== "string" || !event.data) return;
      this.listeners.get(event.channel)?.forEach((fn) => fn(event as LiveEvent));
    };
    socket.onclose = () => {
      this.socket = null;
      this.setOpen(false);
      this.retryLater();
    };
  }
}

export const live = new LiveSocket();

/** Calls `onEvent` for every event on `channel` while mounted (`null`: no channel). */
export function useChannel<T = Record<string, unknown>>(channel: string | null, onEvent: (data: T) => void): void {
  const ref = useRef(onEvent);
  ref.current = onEvent;
  useEffect(() => {
    if (!channel) return;
    return live.listen(channel, (e) => ref.current(e.data as T));
  }, [channel]);
}

/** Whether the live socket is connected (for the "live" badge in the header); kept open while `enabled`
 * (someone is logged in). */
export function useLiveStatus(enabled: boolean): boolean {
  const [open, setOpen] = useState(live.open);
  useEffect(() => live.onStatus(setOpen), []);
  useEffect(() => {
    if (enabled) live.connect();
    else live.disconnect();
  }, [enabled]);
  return open;
}
