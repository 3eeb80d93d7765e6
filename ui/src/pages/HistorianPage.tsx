export default function HistorianPage() {
  return (
    <section className="page">
      <h1>Historian</h1>
    </section>
  );
}
