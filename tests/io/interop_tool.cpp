// Helper for the h5py interop test (tests/io/h5py_interop.py).
//   interop_tool write PATH   exports Sequential(Linear(4,3), ReLU, Linear(3,2)) with known values
//   interop_tool read PATH    loads a file written by h5py with PyTorch's names and checks values
#include <cstdio>
#include <cstring>

#include <lowbit/lowbit.h>

using namespace lowbit;

static std::shared_ptr<nn::Sequential> model() {
  return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(4, 3), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(3, 2)});
}
// value of element i of tensor k: the same formula the Python side uses
static float expected(int k, int64_t i) {
  return static_cast<float>(0.25 * static_cast<double>(i) - static_cast<double>(k));
}

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  auto m = model();
  try {
    if (std::strcmp(argv[1], "write") == 0) {
      NoGradGuard ng;
      int k = 0;
      for (auto& [name, t] : m->state_dict()) {
        for (int64_t i = 0; i < t.numel(); ++i) t.data_ptr<float>()[i] = expected(k, i);
        ++k;
      }
      io::export_model(argv[2], *m, "[model]\ntype = \"mlp\"\n");
      return 0;
    }
    io::load_checkpoint(argv[2], *m);
    int k = 0;
    for (auto& [name, t] : m->state_dict()) {
      for (int64_t i = 0; i < t.numel(); ++i)
        if (t.data_ptr<float>()[i] != expected(k, i)) {
          std::fprintf(stderr, "%s[%lld] = %g, expected %g\n", name.c_str(), static_cast<long long>(i),
                       t.data_ptr<float>()[i], expected(k, i));
          return 1;
        }
      ++k;
    }
    std::printf("loaded %zu tensors written by h5py\n", m->state_dict().size());
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
