"""Our embedding classes inside the frameworks' own Qdrant stores (qdrant-client local mode), end to end."""

from pathlib import Path

import numpy as np
import pytest

from files import one_thread  # noqa: F401  (autouse: one torch thread)
from lganna_rag.ingest import Chunker, discover, load_file

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "docs"
QUESTIONS = {
    "how hot should the water be for green tea?": "tea-brewing.html",
    "my pods get restarted whenever the database goes down": "kubernetes-probes.md",
    "what do bees do during the cold months": "honeybee-colonies.md",
    "combine several commits into one before merging": "git-rebase.rst",
}


@pytest.fixture(scope="module")
def example_chunks(minilm) -> list[dict]:
    """The example folder chunked by our ingestion (128-token chunks)."""
    chunker = Chunker(minilm.tokenizer, size=128, overlap=16)
    out = []
    for ref in discover([EXAMPLES]).files:
        loaded = load_file(ref)
        out += [{"text": c.text, "source": ref.source, "chunk": c.index} for c in chunker.split(loaded.text)]
    assert len(out) > 14
    return out


def test_langchain_qdrant_vector_store_with_lganna_embeddings(minilm, example_chunks):
    from langchain_core.documents import Document
    from langchain_qdrant import QdrantVectorStore, RetrievalMode

    from lganna_rag import LGAnnaEmbeddings

    embeddings = LGAnnaEmbeddings(encoder=minilm, task="retrieval")
    docs = [Document(page_content=c["text"], metadata={"source": c["source"], "chunk": c["chunk"]}) for c in example_chunks]
    store = QdrantVectorStore.from_documents(docs, embedding=embeddings, location=":memory:", collection_name="lc",
                                             retrieval_mode=RetrievalMode.DENSE)
    for question, source in QUESTIONS.items():
        found = store.similarity_search_with_score(question, k=1)
        doc, score = found[0]
        assert doc.metadata["source"] == source, (question, doc.metadata)
        expected = float(minilm.encode_queries([question], task="retrieval")[0] @ minilm.encode_documents([doc.page_content])[0])
        assert score == pytest.approx(expected, abs=1e-4)  # the store ranked with our vectors
    retriever = store.as_retriever(search_kwargs={"k": 2, "filter": None})
    assert retriever.invoke("inverter isolation fault")[0].metadata["source"] == "solar-panels.txt"


def test_llamaindex_vector_store_index_with_lganna_embedding(minilm, example_chunks):
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import MetadataMode, TextNode
    from llama_index.vector_stores.qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient

    from lganna_rag.integrations.llama_index import LGAnnaEmbedding

    client = QdrantClient(":memory:")
    vector_store = QdrantVectorStore(collection_name="li", client=client)
    nodes = [TextNode(text=c["text"], metadata={"source": c["source"], "chunk": c["chunk"]}) for c in example_chunks]
    index = VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=vector_store),
                             embed_model=LGAnnaEmbedding(encoder=minilm, task="retrieval"))
    retriever = index.as_retriever(similarity_top_k=1)
    for question, source in QUESTIONS.items():
        hit = retriever.retrieve(question)[0]
        assert hit.node.metadata["source"] == source, (question, hit.node.metadata)
    # the vectors Qdrant holds are exactly our encoder's document vectors (of the text LlamaIndex embeds:
    # the metadata lines, then the chunk)
    point = client.scroll("li", limit=1, with_vectors=True)[0][0]
    node = next(n for n in nodes if n.node_id == point.id)
    embedded = node.get_content(metadata_mode=MetadataMode.EMBED)
    assert embedded.endswith(node.text) and "source: " in embedded
    np.testing.assert_allclose(point.vector, minilm.encode_documents([embedded])[0], atol=1e-5)
