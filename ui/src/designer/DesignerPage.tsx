// The flow designer for /flows/:id (owner: ui-designer; this is the placeholder the scaffold routes to).
import { useParams } from "react-router";

export default function DesignerPage() {
  const { id } = useParams();
  return (
    <section className="page">
      <h1>Flow {id}</h1>
      <p className="muted">The flow designer is not built yet.</p>
    </section>
  );
}
