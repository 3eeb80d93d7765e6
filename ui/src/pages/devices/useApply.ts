// Saving a device or tag writes a new version; "apply" deploys it at once (hot where the planner can).
import { useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { useAuth } from "../../api/auth";
import { api } from "../../api/client";
import type { DeployOut } from "../../api/types";

export function useApply(flow: string) {
  const client = useQueryClient();
  const { can } = useAuth();
  const [result, setResult] = useState<DeployOut | null>(null);
  const [error, setError] = useState<string | null>(null);

  async function afterSave(): Promise<void> {
    await client.invalidateQueries({ queryKey: ["devices", flow] });
    if (!can("flows:deploy")) return;
    try {
      setResult(await api<DeployOut>(`/api/v1/flows/${encodeURIComponent(flow)}/deploy`, { method: "POST", body: {} }));
      setError(null);
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    }
    await client.invalidateQueries({ queryKey: ["hist-tags"] });
  }
  return { afterSave, result, error, clear: () => { setResult(null); setError(null); } };
}
