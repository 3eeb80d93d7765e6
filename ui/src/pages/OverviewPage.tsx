export default function OverviewPage() {
  return (
    <section className="page">
      <h1>Overview</h1>
    </section>
  );
}
