// /flows/:id — the flow designer (`/flows/new` starts a new flow). Loads the spec schema and the
// newest version (spec + layout), then hands them to the editor.
import type { RJSFSchema } from "@rjsf/utils";
import { useQuery } from "@tanstack/react-query";
import { useParams } from "react-router";

import FlowEditor from "./FlowEditor";
import { flowsApi } from "./flowsApi";
import { emptyState, layoutFrom } from "./model";

export default function DesignerPage() {
  const { id = "new" } = useParams();
  const isNew = id === "new";
  const schema = useQuery({ queryKey: ["flow-spec-schema"], queryFn: flowsApi.schema, staleTime: Infinity });
  const stored = useQuery({
    queryKey: ["designer", id],
    enabled: !isNew,
    gcTime: 0,
    queryFn: async () => {
      const flow = await flowsApi.flow(id);
      return { flow, version: await flowsApi.version(id, flow.latest_version) };
    },
  });
  const failed = schema.error ?? stored.error;
  if (failed) {
    return (
      <section className="page">
        <h1>Flow {id}</h1>
        <p className="error">{failed.message}</p>
      </section>
    );
  }
  if (!schema.data || (!isNew && !stored.data)) return <div className="page muted">Loading…</div>;
  if (isNew) {
    return (
      <FlowEditor
        key="new"
        flowId={null}
        baseVersion={null}
        deployedVersion={null}
        initial={emptyState()}
        schema={schema.data as RJSFSchema}
        onReload={() => undefined}
      />
    );
  }
  const { flow, version } = stored.data!;
  return (
    <FlowEditor
      key={`${id}@${version.number}`}
      flowId={id}
      baseVersion={version.number}
      deployedVersion={flow.deployed_version}
      initial={{ spec: version.spec, layout: layoutFrom(version.layout), drafts: [] }}
      schema={schema.data as RJSFSchema}
      onReload={() => void stored.refetch()}
    />
  );
}
